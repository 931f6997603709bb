// One-shot compressors that turn a byte run into exactly one gzip member or
// one zstd frame: the unit of an eStargz / zstd:chunked blob (formats.md §1,
// §2). Used by the layer writer, one compressor per worker thread.
//
// Levels are lazypull's `--level`:
//  - gzip 1–9 (1 fastest, 9 smallest; default 6). 1 and 2 use ISA-L (levels
//    1 and 3: several hundred MB/s per core, ~8% larger than zlib -9);
//    3–8 use libdeflate at the same level; 9 uses libdeflate's level 12.
//    The default, libdeflate 6, was measured on a 425 MB tar of this
//    machine's /usr (python, docs, headers, perl; 22,825 entries) in the
//    writer's member layout: 55-75 MB/s per core, and the blob only 0.06%
//    larger than the same members recompressed with zlib -9 (the
//    reference converter's level), which runs at 7-10 MB/s per core.
//    libdeflate 8-9 are 2-3x slower for <0.7% smaller output.
//  - zstd 1–19, zstd's native levels (default 10, Podman's default for
//    zstd:chunked in containers/storage's compressor; stargz-snapshotter's
//    ctr-remote writes at 3, its "SpeedDefault"). One frame per file
//    compresses small files poorly at low levels: on the cold-start bench's
//    259 MB Debian tar, level 3 made a blob 4.4% larger than `gzip -6` of
//    the whole tar, level 10 0.5% (bench/RESULTS.md, session 12), at 2.7x
//    the conversion CPU (~110 MB/s of tar on two cores) and the same
//    decompression speed. Frames carry the content size and an XXH64
//    content checksum, as the reference writes them.
//
// Output is a function of (input bytes, compression, level) only: the same
// on every run and in every thread, which the writer's determinism relies on.
//
// Thread-safety: a MemberCompressor is used by one thread at a time; distinct
// objects are independent.
#ifndef LAZYPULL_CORE_COMPRESSOR_H_
#define LAZYPULL_CORE_COMPRESSOR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/decompressor.h"

namespace lazypull {

inline constexpr int kDefaultGzipLevel = 6;
inline constexpr int kDefaultZstdLevel = 10;

// The level to use for `level` (0 = the default): InvalidArgument if it is
// outside 1–9 (gzip) or 1–19 (zstd).
absl::StatusOr<int> ResolveCompressionLevel(Compression c, int level);

class MemberCompressor {
 public:
  // REQUIRES: level is a resolved level (see ResolveCompressionLevel).
  static absl::StatusOr<std::unique_ptr<MemberCompressor>> New(Compression c,
                                                               int level);
  virtual ~MemberCompressor() = default;

  // Appends to *out one complete gzip member / zstd frame whose content is
  // the concatenation of `pieces`. Internal errors of the library (out of
  // memory) are Internal, with the library's code.
  absl::Status Compress(absl::Span<const absl::string_view> pieces,
                        std::string* out);
  absl::Status Compress(absl::string_view data, std::string* out) {
    return CompressContiguous(data, out);
  }

 protected:
  virtual absl::Status CompressContiguous(absl::string_view in,
                                          std::string* out) = 0;
  // A reusable, uninitialized output buffer of at least n bytes.
  char* OutputBuffer(size_t n);

 private:
  std::string scratch_;  // gathers multi-piece input
  std::unique_ptr<char[]> out_buf_;
  size_t out_capacity_ = 0;
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_COMPRESSOR_H_
