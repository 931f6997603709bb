// A test BlobSource over bytes in memory that counts its plain reads
// (ReadAt), its streams (OpenStream) and the bytes they hand out, can fail
// a stream once a number of bytes have been streamed or the next few plain
// reads, and can run a hook at
// each stream's first read (a test making reads "run ahead" of it).
//
// Thread-safety: as BlobSource; set fail_after_ and on_stream_start_ before
// the source is used.
#ifndef LAZYPULL_CORE_TESTING_STREAM_SOURCE_H_
#define LAZYPULL_CORE_TESTING_STREAM_SOURCE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/blob_source.h"
#include "core/memory_blob_source.h"

namespace lazypull::testing {

class StreamSource : public BlobSource {
 public:
  explicit StreamSource(std::string blob) : inner_(std::move(blob)) {}
  uint64_t size() const override { return inner_.size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority p) override;
  using BlobSource::ReadAt;
  absl::StatusOr<std::unique_ptr<BlobStream>> OpenStream(uint64_t offset,
                                                         uint64_t len,
                                                         ReadPriority) override;
  std::string Describe() const override { return "streams"; }
  void ResetCounters() { plain_reads_ = 0; }

  std::atomic<int> plain_reads_{0}, streams_{0};
  std::atomic<uint64_t> streamed_{0};
  // Fail a stream's read once this many bytes were streamed (0: never).
  uint64_t fail_after_ = 0;
  // Fail this many plain reads (ReadAt) from now on, then succeed.
  std::atomic<int> fail_plain_reads_{0};
  // Run at the first read of every stream (given the stream's number, from
  // 1), on the reading thread, before its bytes are handed out.
  std::function<void(int)> on_stream_start_;

 private:
  class Stream;
  MemoryBlobSource inner_;
};

}  // namespace lazypull::testing

#endif  // LAZYPULL_CORE_TESTING_STREAM_SOURCE_H_
