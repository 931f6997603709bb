#include "core/decompressor.h"

#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/isal_inflater.h"
#include "core/zstd_decompressor.h"

namespace lazypull {

std::unique_ptr<StreamDecompressor> StreamDecompressor::New(Compression c) {
  if (c == Compression::kZstd) return NewZstdDecompressor();
  return NewIsalInflater();
}

absl::Status DecompressRange(Compression c, absl::string_view compressed,
                             uint64_t skip, absl::Span<char> out) {
  thread_local std::array<std::unique_ptr<StreamDecompressor>, 2> pool;
  std::unique_ptr<StreamDecompressor>& d = pool[static_cast<size_t>(c)];
  if (d == nullptr) d = StreamDecompressor::New(c);
  d->Reset();
  thread_local std::array<char, 64 * 1024> scratch;
  uint64_t skipped = 0;
  size_t filled = 0;
  const uint64_t want = skip + out.size();
  while (skipped + filled < want) {
    absl::Span<char> dst =
        skipped < skip ? absl::MakeSpan(scratch.data(),
                                        static_cast<size_t>(std::min<uint64_t>(
                                            scratch.size(), skip - skipped)))
                       : out.subspan(filled);
    absl::StatusOr<StreamDecompressor::Result> r =
        d->Decompress(compressed, dst);
    if (!r.ok()) {
      d->Reset();
      return r.status();
    }
    compressed.remove_prefix(r->consumed);
    if (skipped < skip) {
      skipped += r->produced;
    } else {
      filled += r->produced;
    }
    if (r->produced == 0 && r->consumed == 0 && !r->frame_end) {
      d->Reset();
      return absl::DataLossError(absl::StrCat("compressed data ended after ",
                                              skipped + filled, " of ", want,
                                              " bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace lazypull
