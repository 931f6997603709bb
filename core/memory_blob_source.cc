#include "core/memory_blob_source.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace lazypull {

absl::Status MemoryBlobSource::ReadAt(uint64_t offset, absl::Span<char> dst,
                                      ReadPriority /*priority*/) {
  const uint64_t size = data_.size();
  if (offset > size || dst.size() > size - offset) {
    return absl::OutOfRangeError(
        absl::StrCat("read [", offset, ", ", offset + dst.size(),
                     ") past the end of ", Describe(), " (", size, " bytes)"));
  }
  if (!dst.empty()) std::memcpy(dst.data(), data_.data() + offset, dst.size());
  reads_.fetch_add(1, std::memory_order_relaxed);
  bytes_read_.fetch_add(dst.size(), std::memory_order_relaxed);
  return absl::OkStatus();
}

void MemoryBlobSource::ResetCounters() {
  reads_.store(0, std::memory_order_relaxed);
  bytes_read_.store(0, std::memory_order_relaxed);
}

}  // namespace lazypull
