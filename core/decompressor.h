// Decompression of lazily-pullable layer payloads: gzip members (ISA-L
// inflate) and zstd frames (libzstd), behind one streaming interface.
//
// A compressed extent of a layer is one or more gzip members / zstd frames in
// a row (zstd skippable frames are skipped). StreamDecompressor walks such a
// run and reports every member/frame end, so a caller can map compressed
// member starts to uncompressed positions. DecompressRange is the random-
// access primitive of the read path: inflate from a member start, skip
// `innerOffset` bytes, fill exactly the chunk's bytes, and stop — its output
// is bounded by what the caller asked for, so a "decompression bomb" can cost
// no more than the chunk it claims to be.
//
// Errors: DataLoss for corrupt or truncated data (the library's own code and
// name kept in the message); the one translation function per library lives
// in its implementation file.
//
// Thread-safety: a StreamDecompressor is used by one thread at a time.
// DecompressRange is safe from any thread (it keeps one decompressor per
// thread and compression).
#ifndef LAZYPULL_CORE_DECOMPRESSOR_H_
#define LAZYPULL_CORE_DECOMPRESSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lazypull {

enum class Compression : uint8_t { kGzip, kZstd };

class StreamDecompressor {
 public:
  struct Result {
    size_t consumed = 0;     // input bytes used
    size_t produced = 0;     // output bytes written
    bool frame_end = false;  // a member/frame ended exactly at `consumed`
  };

  // A decompressor positioned at a member/frame boundary.
  static std::unique_ptr<StreamDecompressor> New(Compression c);
  virtual ~StreamDecompressor() = default;

  // Forgets any partial member/frame: the next input starts a new one.
  virtual void Reset() = 0;

  // Decompresses from `in` into `out`. Returns when a member/frame ends,
  // `out` is full, or `in` is used up (whichever comes first); a call after
  // a member end starts the next member. Progress is guaranteed unless `in`
  // is empty or `out` is empty.
  virtual absl::StatusOr<Result> Decompress(absl::string_view in,
                                            absl::Span<char> out) = 0;
};

// Decompresses the run of members/frames at the start of `compressed`,
// discards the first `skip` output bytes and fills all of `out`. DataLoss if
// the data is corrupt or ends before skip + out.size() bytes were produced.
absl::Status DecompressRange(Compression c, absl::string_view compressed,
                             uint64_t skip, absl::Span<char> out);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_DECOMPRESSOR_H_
