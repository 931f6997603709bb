// LayerWriter: builds an eStargz or zstd:chunked blob from a tar stream, as
// the stargz reference's estargz.Build does (formats.md §1–§2), fast.
//
// Layout (both formats, gzip members / zstd frames alike): a new member
// starts at the blob start, at the payload of every non-empty regular file,
// at every chunk boundary (with min_chunk_size, only once the member is that
// big), and (gzip) at the TOC's tar header; the tar
// padding and the headers of the entries that follow a payload go into the
// member of its last chunk. eStargz ends with a member holding a tar of
// `stargz.index.json` plus the two 512-byte EOF blocks, then the 51-byte
// footer. zstd:chunked appends the EOF blocks to the last frame (a complete
// tar for `zstd -dc | tar`; the reference omits them), then the TOC as one
// zstd frame inside a skippable frame, then the 40-byte "GnUlInUx" footer in
// a skippable frame.
//
// Input: the entries of the tar, minus any `stargz.index.json` and
// landmarks (so an eStargz/zstd:chunked layer, decompressed, can be
// re-optimized), a later entry with the same cleaned name replacing an
// earlier one, as the reference does. Tar headers are copied verbatim (PAX
// and GNU extension headers included; global 'g' headers dropped); the
// landmark and TOC headers are USTAR headers like Go's archive/tar writes.
//
// Order (§1.3): without prioritized files, `.no.prefetch.landmark` first,
// then every entry in tar order. With them, each listed file in the given
// order, preceded by its parent directories (those with an entry) and, for a
// hardlink, its target (recursively); then `.prefetch.landmark`; then the
// rest in tar order. Listed paths that are not in the tar are skipped and
// reported in LayerWriteResult::missing_prioritized.
//
// TOC (§1.2): JSON as Go's json.MarshalIndent(toc, "", "\t") writes the
// reference's TOCEntry (same key order and omitempty rules, Go's string
// escaping: <, >, & as \u003c..., invalid UTF-8 as \ufffd); every `reg` has
// `digest`; `chunkSize` on every full chunk only; userName/groupName only
// when an id's name first appears or changes; modtime rounded to seconds,
// omitted for time 0. Entries whose names (or hardlink targets) climb above
// the root are refused, and the finished TOC is parsed back and indexed
// (LayerIndex::Build) so a layer lazypull could not read is never reported
// as written.
//
// Parallelism and determinism: the tar is parsed once, sequentially; the
// member plan is fixed before any compression; members are compressed
// independently by `threads` workers in jobs of about 1 MiB (or one
// member), while the calling thread writes finished jobs in order and
// hashes the uncompressed stream (DiffID) and the blob. Output bytes depend
// only on the input and the options (format, chunk size, min chunk size,
// levels, prioritized list): never
// on the thread count or timing.
//
// Thread-safety: WriteLayer may be called from several threads at once for
// different inputs; it starts and joins its own worker threads.
#ifndef LAZYPULL_CORE_LAYER_WRITER_H_
#define LAZYPULL_CORE_LAYER_WRITER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/decompressor.h"
#include "core/digest.h"

namespace lazypull {

// The layer descriptor annotation holding the TOC's digest: the trust anchor
// of an eStargz layer (formats.md §2).
inline constexpr char kTocDigestAnnotation[] =
    "containerd.io/snapshot/stargz/toc.digest";
// The zstd:chunked trust anchor (the compressed TOC's digest) and where the
// TOC is, each under containers/storage's new prefix and its old one.
inline constexpr const char* kZstdChunkedChecksumAnnotations[] = {
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
};
inline constexpr const char* kZstdChunkedPositionAnnotations[] = {
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
};
// Whether a layer descriptor's annotations carry a lazy-pull trust anchor
// (either of the above): the layer is eStargz or zstd:chunked, made to be
// mounted lazily.
bool HasLazyPullAnchor(const std::map<std::string, std::string>& annotations);

// lazypull's own layer annotations, hints that let a mount start reads
// before it has the TOC (nothing they bring is used unverified; a wrong one
// costs bytes, not correctness):
// - where the blob's prefetch range ends (the .prefetch.landmark entry's
//   offset), on layers with prioritized files;
inline constexpr char kPrefetchSizeAnnotation[] = "io.lazypull.prefetch-size";
// - where an eStargz TOC member starts (zstd:chunked layers say it in their
//   manifest-position), so that one tail read brings footer and TOC exactly.
inline constexpr char kTocOffsetAnnotation[] = "io.lazypull.toc-offset";

struct LayerWriterOptions {
  // kGzip: eStargz (51-byte footer). kZstd: zstd:chunked (40-byte footer,
  // the stargz reference's dialect).
  Compression compression = Compression::kGzip;
  // Largest chunk of a file (default 1 MiB: bench/TUNING.md; the reference
  // uses 4 MiB); 1 B – 1 GiB.
  uint64_t chunk_size = 1 << 20;
  // "Min chunk size" (the reference's WithMinChunkSize): 0 (default) starts
  // a member at every payload and chunk, as above. N > 0 starts one only
  // when the current member already holds at least N uncompressed bytes
  // (the reference counts compressed bytes, so the same N groups 2-3x more
  // there); otherwise the payload continues the member and its TOC entry
  // says where with `innerOffset`. Landmarks still start a member. Small
  // files then share members: a smaller blob and less per-member work, but
  // readers that predate innerOffset (stargz-snapshotter before v0.13,
  // containers/storage) cannot read such a layer. 0 – 64 MiB (a read of a
  // file inflates its member up to it).
  uint64_t min_chunk_size = 0;
  // 0 = the default of the compression (gzip 6, zstd 3); see compressor.h.
  int level = 0;
  // The level of the prioritized files' members (those before the prefetch
  // landmark: the bytes every cold start waits for, usually a few MB), for
  // their first 64 MiB (uncompressed). 0 = gzip: at least 9 (3% smaller than
  // 6 on a python3 start-up set, ~5x the CPU, spent once at conversion);
  // zstd: `level`.
  int prioritized_level = 0;
  // Tar paths (any of "a/b", "./a/b", "/a/b") in access order.
  std::vector<std::string> prioritized_files;
  // Compression threads (default 1); 0 = one per core.
  int threads = 1;
  // A TOC larger than this is refused (default: what readers accept,
  // FooterLimits::max_toc_size).
  uint64_t max_toc_size = uint64_t{512} << 20;
};

struct LayerWriteResult {
  Digest toc_digest;  // sha256 of the TOC JSON
  Digest diff_id;     // sha256 of the whole uncompressed stream
  uint64_t uncompressed_size = 0;
  Digest blob_digest;  // sha256 of the blob
  uint64_t blob_size = 0;
  uint64_t toc_offset = 0;  // as in the footer
  uint64_t toc_compressed_size = 0;
  uint64_t toc_uncompressed_size = 0;
  Digest toc_compressed_digest;  // sha256 of the compressed TOC (zstd only)
  uint64_t toc_entry_count = 0;
  std::optional<uint64_t> prefetch_landmark_offset;
  std::vector<std::string> missing_prioritized;
  // The layer descriptor's annotations, sorted by key.
  std::vector<std::pair<std::string, std::string>> annotations;
};

// Receives the blob front to back.
class BlobSink {
 public:
  virtual ~BlobSink() = default;
  virtual absl::Status Write(absl::string_view data) = 0;
};

// A BlobSink that appends to a string (tests, small layers).
class StringBlobSink : public BlobSink {
 public:
  absl::Status Write(absl::string_view data) override {
    out.append(data.data(), data.size());
    return absl::OkStatus();
  }
  std::string out;
};

// Converts `tar` (a whole uncompressed tar stream, kept alive by the caller
// for the duration of the call) into a layer written to `sink`. Errors:
// InvalidArgument for a malformed or unsupported tar, or options out of
// range; the sink's error if it fails.
absl::StatusOr<LayerWriteResult> WriteLayer(absl::string_view tar,
                                            const LayerWriterOptions& options,
                                            BlobSink* sink);

// The tar name as the reference keys it: clean("/" + name) without the
// leading "/" (".." at the root stays at the root); the root is "".
std::string CleanEntryName(absl::string_view name);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LAYER_WRITER_H_
