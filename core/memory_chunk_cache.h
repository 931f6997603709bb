// MemoryChunkCache: a bounded in-memory ChunkCache with LRU eviction.
//
// Used for tests and for `--cache-dir none`-style ephemeral mounts.
//
// Thread-safety: all methods are safe to call concurrently (one mutex).
#ifndef LAZYPULL_CORE_MEMORY_CHUNK_CACHE_H_
#define LAZYPULL_CORE_MEMORY_CHUNK_CACHE_H_

#include <list>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "core/chunk_cache.h"

namespace lazypull {

class MemoryChunkCache final : public ChunkCache {
 public:
  // `capacity` bytes of chunk data at most (0 = unbounded).
  explicit MemoryChunkCache(uint64_t capacity) : capacity_(capacity) {}

  absl::StatusOr<bool> Read(const Digest& d, uint64_t size, uint64_t offset,
                            absl::Span<char> out) override;
  absl::Status Insert(const Digest& d, absl::string_view data) override;
  bool Contains(const Digest& d) override;

  uint64_t bytes() const;
  uint64_t entries() const;

 private:
  struct Entry {
    Digest digest;
    std::string data;
  };
  const uint64_t capacity_;
  mutable absl::Mutex mu_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // front = most recent
  absl::flat_hash_map<Digest, std::list<Entry>::iterator> map_
      ABSL_GUARDED_BY(mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_MEMORY_CHUNK_CACHE_H_
