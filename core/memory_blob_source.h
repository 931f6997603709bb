// MemoryBlobSource: a BlobSource over bytes held in memory.
//
// For tests and for small blobs already fetched whole. It counts the reads
// it serves and the bytes they returned, so tests can assert how much of a
// blob a code path touched (e.g. "Open reads only the tail", "a chunk read
// fetches only its extent").
//
// Contract: that of BlobSource (core/blob_source.h). The bytes never change
// after construction; a read past the end is OutOfRange and is not counted.
//
// Thread-safety: ReadAt, the counters and Describe may be called
// concurrently from any number of threads (the data is immutable; the
// counters are atomics).
#ifndef LAZYPULL_CORE_MEMORY_BLOB_SOURCE_H_
#define LAZYPULL_CORE_MEMORY_BLOB_SOURCE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "core/blob_source.h"

namespace lazypull {

class MemoryBlobSource final : public BlobSource {
 public:
  // Serves `data`; `name` appears in Describe() as "memory <name>".
  explicit MemoryBlobSource(std::string data, std::string name = "blob")
      : data_(std::move(data)), name_(std::move(name)) {}

  uint64_t size() const override { return data_.size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority priority) override;
  using BlobSource::ReadAt;
  std::string Describe() const override { return "memory " + name_; }

  // The bytes served.
  const std::string& data() const { return data_; }
  // Successful ReadAt calls so far, and the bytes they returned.
  uint64_t reads() const { return reads_.load(std::memory_order_relaxed); }
  uint64_t bytes_read() const {
    return bytes_read_.load(std::memory_order_relaxed);
  }
  // Sets both counters back to zero.
  void ResetCounters();

 private:
  const std::string data_;
  const std::string name_;
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> bytes_read_{0};
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_MEMORY_BLOB_SOURCE_H_
