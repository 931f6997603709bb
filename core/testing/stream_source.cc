#include "core/testing/stream_source.h"

#include "core/status_macros.h"

namespace lazypull::testing {

class StreamSource::Stream : public BlobStream {
 public:
  Stream(StreamSource* s, int number, uint64_t pos, uint64_t end)
      : s_(s), number_(number), pos_(pos), end_(end) {}
  absl::Status Read(absl::Span<char> dst) override {
    if (dst.size() > end_ - pos_) return absl::OutOfRangeError("past end");
    if (!started_) {
      started_ = true;
      if (s_->on_stream_start_) s_->on_stream_start_(number_);
    }
    if (s_->fail_after_ != 0 &&
        s_->streamed_.load() + dst.size() > s_->fail_after_) {
      return absl::UnavailableError("connection dropped");
    }
    RETURN_IF_ERROR(s_->inner_.ReadAt(pos_, dst));
    pos_ += dst.size();
    s_->streamed_ += dst.size();
    return absl::OkStatus();
  }

 private:
  StreamSource* const s_;
  const int number_;
  bool started_ = false;
  uint64_t pos_;
  const uint64_t end_;
};

absl::Status StreamSource::ReadAt(uint64_t offset, absl::Span<char> dst,
                                  ReadPriority p) {
  ++plain_reads_;
  int left = fail_plain_reads_.load();
  while (left > 0 && !fail_plain_reads_.compare_exchange_weak(left, left - 1)) {
  }
  if (left > 0) return absl::UnavailableError("connection refused");
  return inner_.ReadAt(offset, dst, p);
}

absl::StatusOr<std::unique_ptr<BlobStream>> StreamSource::OpenStream(
    uint64_t offset, uint64_t len, ReadPriority) {
  const int number = ++streams_;
  return std::make_unique<Stream>(this, number, offset, offset + len);
}

}  // namespace lazypull::testing
