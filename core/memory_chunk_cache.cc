#include "core/memory_chunk_cache.h"

#include <cstring>

namespace lazypull {

absl::StatusOr<bool> MemoryChunkCache::Read(const Digest& d, uint64_t size,
                                            uint64_t offset,
                                            absl::Span<char> out) {
  absl::MutexLock l(&mu_);
  auto it = map_.find(d);
  if (it == map_.end() || it->second->data.size() != size) return false;
  lru_.splice(lru_.begin(), lru_, it->second);
  std::memcpy(out.data(), it->second->data.data() + offset, out.size());
  return true;
}

absl::Status MemoryChunkCache::Insert(const Digest& d, absl::string_view data) {
  absl::MutexLock l(&mu_);
  if (map_.contains(d)) return absl::OkStatus();
  if (capacity_ != 0 && data.size() > capacity_) return absl::OkStatus();
  lru_.push_front(Entry{d, std::string(data)});
  map_[d] = lru_.begin();
  bytes_ += data.size();
  while (capacity_ != 0 && bytes_ > capacity_) {
    Entry& victim = lru_.back();
    bytes_ -= victim.data.size();
    map_.erase(victim.digest);
    lru_.pop_back();
  }
  return absl::OkStatus();
}

bool MemoryChunkCache::Contains(const Digest& d) {
  absl::MutexLock l(&mu_);
  return map_.contains(d);
}

uint64_t MemoryChunkCache::bytes() const {
  absl::MutexLock l(&mu_);
  return bytes_;
}

uint64_t MemoryChunkCache::entries() const {
  absl::MutexLock l(&mu_);
  return map_.size();
}

}  // namespace lazypull
