// libFuzzer target for the footer + TOC parser (and the layer index built on
// it). Built outside Bazel with clang 14 by tests/fuzz/run_fuzzer.sh.
//
// Each input is used three ways:
//  (a) as a whole layer blob: LayerReader::Open over a MemoryBlobSource
//      (ParseFooter, TOC read + decompression, ParseToc, LayerIndex::Build),
//      once with the minimal 72-byte tail read and once with a tail read that
//      covers the whole blob (the "TOC inside the tail" path); both must agree.
//      If the layer opens, every chunk is read with ReadChunk (bounded);
//  (b) as TOC JSON: ParseToc + LayerIndex::Build directly;
//  (c) its last 72 bytes as a footer tail: ParseFooter.
// Errors are expected and ignored; only crashes, sanitizer reports and broken
// invariants (__builtin_trap) count as findings.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/blob_source.h"
#include "core/footer.h"
#include "core/layer_index.h"
#include "core/layer_reader.h"
#include "core/memory_blob_source.h"
#include "core/toc.h"

namespace lazypull {
namespace {

// Keep one input's work bounded: the limits are parameters of the code under
// test, the defaults (512 MiB TOCs) would only make each run slow.
constexpr uint64_t kMaxTocSize = uint64_t{16} << 20;
constexpr uint64_t kMaxChunkSize = uint64_t{16} << 20;
constexpr uint64_t kMaxReadBytes = uint64_t{64} << 20;
constexpr size_t kMaxInvariantChecks = 10000;
constexpr uint64_t kMaxPathCheckBytes = uint64_t{256} << 10;

// Cheap structural invariants of a built index.
void CheckIndex(const LayerIndex& idx) {
  // Path() is O(depth): bound the bytes spent on it (names may be deep).
  const auto& dirents = idx.dirents();
  uint64_t path_budget = kMaxPathCheckBytes;
  for (size_t d = 0; d < dirents.size() && d < kMaxInvariantChecks; ++d) {
    if (dirents[d].inode >= idx.inodes().size()) __builtin_trap();
    if (path_budget == 0) continue;
    std::string path = idx.Path(static_cast<uint32_t>(d));
    path_budget -= std::min<uint64_t>(path_budget, path.size() + 1);
    std::optional<uint32_t> ino = idx.Resolve(path);
    if (!ino || *ino != dirents[d].inode) __builtin_trap();
  }
  const auto& inodes = idx.inodes();
  for (uint32_t i = 0; i < inodes.size() && i < kMaxInvariantChecks; ++i) {
    absl::Span<const Chunk> cs = idx.FileChunks(i);
    uint64_t covered = 0;
    for (size_t k = 0; k < cs.size(); ++k) {
      if (cs[k].file_offset != covered || cs[k].size == 0) __builtin_trap();
      if (idx.ChunkAt(i, cs[k].file_offset) != inodes[i].first_chunk + k) {
        __builtin_trap();
      }
      covered += cs[k].size;
    }
    if (!cs.empty() && covered != inodes[i].size) __builtin_trap();
  }
}

void FuzzBlob(absl::string_view data) {
  auto source = std::make_shared<MemoryBlobSource>(std::string(data), "fuzz");
  LayerOpenOptions options;
  options.footer_limits.max_toc_size = kMaxTocSize;
  absl::StatusOr<std::unique_ptr<LayerReader>> reader =
      LayerReader::Open(source, options);

  LayerOpenOptions whole = options;
  whole.tail_read_size = data.size();
  absl::StatusOr<std::unique_ptr<LayerReader>> reader2 =
      LayerReader::Open(source, whole);
  if (reader.ok() != reader2.ok()) __builtin_trap();
  if (!reader.ok()) return;
  const LayerReader& r = **reader;
  if (r.toc_digest() != (*reader2)->toc_digest() ||
      r.index().chunks().size() != (*reader2)->index().chunks().size()) {
    __builtin_trap();
  }
  CheckIndex(r.index());

  const std::vector<Chunk>& chunks = r.index().chunks();
  uint64_t budget = kMaxReadBytes;
  std::string buf;
  for (uint32_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    if (!c.zeros && (c.blob_end <= c.blob_offset || c.blob_end > data.size())) {
      __builtin_trap();  // extents must be non-empty and inside the blob
    }
    if (c.size > kMaxChunkSize || c.size > budget) continue;
    budget -= c.size;
    buf.resize(c.size);
    (void)r.ReadChunk(i, absl::MakeSpan(buf));
    (void)r.DescribeChunk(i);
  }
}

void FuzzTocJson(absl::string_view data) {
  std::string json = PaddedTocBuffer(data);
  absl::StatusOr<Toc> toc = ParseToc(json);
  if (!toc.ok()) return;
  absl::StatusOr<LayerIndex> idx = LayerIndex::Build(*toc, uint64_t{1} << 40);
  if (!idx.ok()) return;
  CheckIndex(*idx);
}

void FuzzFooter(absl::string_view data) {
  absl::string_view tail = data.size() > kFooterTailSize
                               ? data.substr(data.size() - kFooterTailSize)
                               : data;
  absl::StatusOr<Footer> f = ParseFooter(tail, data.size());
  if (!f.ok()) return;
  if (f->footer_size > data.size() || f->toc_offset > data.size() ||
      f->toc_compressed_size > data.size() - f->toc_offset) {
    __builtin_trap();  // ParseFooter promised to check these
  }
}

}  // namespace
}  // namespace lazypull

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view in(reinterpret_cast<const char*>(data), size);
  lazypull::FuzzFooter(in);
  lazypull::FuzzTocJson(in);
  lazypull::FuzzBlob(in);
  return 0;
}
