// BlobSource: random access to the bytes of one compressed layer blob.
//
// This is the seam between "what the bytes mean" (footer, TOC, chunks: the
// rest of core/) and "where the bytes come from": a local file
// (//core:file_blob_source), the network (//fetch:http_blob_source, over the
// range scheduler), or a scripted fault-injecting double in tests. core/ owns
// the interface and never depends on an implementation.
//
// Contract:
//  - size() is the blob's exact length, known once the source exists.
//  - ReadAt fills all of `dst` with the bytes at [offset, offset+dst.size()),
//    or fails; it never returns a short read as success. A range past the end
//    is OutOfRange. Transient failures are retried *inside* the source (one
//    layer of retries); a returned error is final for that call.
//  - `priority` tells a scheduling source how urgent the read is; sources
//    without a scheduler ignore it.
//  - The bytes are untrusted: callers verify them against the TOC.
//
// Thread-safety: implementations must allow concurrent ReadAt calls from any
// number of threads.
#ifndef LAZYPULL_CORE_BLOB_SOURCE_H_
#define LAZYPULL_CORE_BLOB_SOURCE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace lazypull {

// Why a read is issued, most urgent first.
enum class ReadPriority : uint8_t {
  kOnDemand = 0,    // a process is blocked on it
  kPrefetch = 1,    // the prioritized range of a layer
  kBackground = 2,  // filling the rest of a layer
};

// The bytes of one range of a blob, read in order (BlobSource::OpenStream).
// Used by one thread at a time.
class BlobStream {
 public:
  virtual ~BlobStream() = default;
  // Fills all of `dst` with the range's next dst.size() bytes, or fails (a
  // failure is final for the stream). Reading past the range's end is
  // OutOfRange. The bytes are as untrusted as ReadAt's.
  virtual absl::Status Read(absl::Span<char> dst) = 0;
};

class BlobSource {
 public:
  virtual ~BlobSource() = default;

  // Length of the blob in bytes.
  virtual uint64_t size() const = 0;

  // Reads exactly dst.size() bytes at `offset`. See the contract above.
  virtual absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                              ReadPriority priority) = 0;
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst) {
    return ReadAt(offset, dst, ReadPriority::kOnDemand);
  }

  // ReadAt for a caller that can use the first bytes before the rest: a
  // source that receives them over time calls `progress(n)` on the calling
  // thread, before it returns, each time a longer prefix dst[0, n) is in
  // place (n only grows; reported bytes are not written again; the whole
  // of dst need not be reported: a successful return says it). They are as
  // untrusted as any. The result is ReadAt's: an error after some progress
  // still fails the read (the caller must not count on the bytes it did not
  // get). This default reports nothing before it returns.
  virtual absl::Status ReadAtStreaming(
      uint64_t offset, absl::Span<char> dst, ReadPriority priority,
      const std::function<void(size_t)>& progress) {
    (void)progress;
    return ReadAt(offset, dst, priority);
  }

  // Opens [offset, offset + len) for reading in order, in pieces the caller
  // chooses, at `priority`. A source that pays per request (HTTP) fetches
  // it as one long answer: no request per piece, bytes in blob order. The
  // reader sets the pace: a source stops receiving while the reader lags.
  // May be called from any thread; the stream must not outlive the source.
  // This default reads each piece with ReadAt.
  virtual absl::StatusOr<std::unique_ptr<BlobStream>> OpenStream(
      uint64_t offset, uint64_t len, ReadPriority priority);

  // A short human-readable name for log lines and errors ("file /x/layer").
  virtual std::string Describe() const = 0;
};

// BlobSource::OpenStream's default: ReadAt, piece by piece.
class ReadAtBlobStream : public BlobStream {
 public:
  ReadAtBlobStream(BlobSource* source, uint64_t offset, uint64_t len,
                   ReadPriority priority)
      : source_(source),
        pos_(offset),
        end_(offset + len),
        priority_(priority) {}
  absl::Status Read(absl::Span<char> dst) override {
    if (!status_.ok()) return status_;
    if (dst.size() > end_ - pos_) {
      return absl::OutOfRangeError("read past the end of a blob stream");
    }
    status_ = source_->ReadAt(pos_, dst, priority_);
    if (status_.ok()) pos_ += dst.size();
    return status_;
  }

 private:
  BlobSource* const source_;
  uint64_t pos_;
  const uint64_t end_;
  const ReadPriority priority_;
  absl::Status status_;  // the first failure, final
};

inline absl::StatusOr<std::unique_ptr<BlobStream>> BlobSource::OpenStream(
    uint64_t offset, uint64_t len, ReadPriority priority) {
  if (offset > size() || len > size() - offset) {
    return absl::OutOfRangeError("blob stream past the end of the blob");
  }
  return std::make_unique<ReadAtBlobStream>(this, offset, len, priority);
}

}  // namespace lazypull

#endif  // LAZYPULL_CORE_BLOB_SOURCE_H_
