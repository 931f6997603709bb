// ChunkCache: where verified, uncompressed chunks are kept, keyed by their
// content digest (content addressing: the same chunk in two files, two layers
// or two images is one cache entry).
//
// Contract:
//  - Only verified bytes go in: Insert's caller has checked sha256(data) == d.
//    Implementations may still re-check (cheap insurance) but need not.
//  - Read copies part of a cached chunk; `false` means a miss (the caller
//    then fetches, verifies and inserts). A cache may drop entries at any
//    time (bounded caches evict): a chunk read once may miss later.
//  - Errors are for broken storage only; a corrupt entry detected by an
//    implementation is dropped and reported as a miss.
//
// Thread-safety: implementations must be safe for concurrent use from any
// number of threads.
#ifndef LAZYPULL_CORE_CHUNK_CACHE_H_
#define LAZYPULL_CORE_CHUNK_CACHE_H_

#include <unistd.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/digest.h"

namespace lazypull {

// An open file holding one cached chunk at offset(): a chunk file of its own
// (offset 0; closes on destruction) or a chunk inside a shared pack file
// (sharing the pack's descriptor, which stays open while any of its chunks'
// CachedFiles lives). Holding one keeps the bytes readable even if the
// chunk is evicted.
class CachedFile {
 public:
  explicit CachedFile(int fd) : fd_(fd), offset_(0) {}
  // The chunk at `offset` of `file`.
  CachedFile(std::shared_ptr<const CachedFile> file, uint64_t offset)
      : fd_(file->fd()),
        offset_(file->offset() + offset),
        owner_(std::move(file)) {}
  ~CachedFile() {
    if (owner_ == nullptr) close(fd_);
  }
  CachedFile(const CachedFile&) = delete;
  CachedFile& operator=(const CachedFile&) = delete;
  int fd() const { return fd_; }
  // Where the chunk's first byte is in fd().
  uint64_t offset() const { return offset_; }

 private:
  const int fd_;
  const uint64_t offset_;
  const std::shared_ptr<const CachedFile> owner_;
};

class ChunkCache {
 public:
  virtual ~ChunkCache() = default;

  // If chunk `d` (of `size` bytes) is cached, copies its bytes
  // [offset, offset + out.size()) into `out` and returns true.
  // REQUIRES: offset + out.size() <= size.
  virtual absl::StatusOr<bool> Read(const Digest& d, uint64_t size,
                                    uint64_t offset, absl::Span<char> out) = 0;

  // Adds a verified chunk. Inserting a present chunk is a no-op.
  virtual absl::Status Insert(const Digest& d, absl::string_view data) = 0;

  // The same, for bytes the caller already holds in a shared buffer: a
  // cache that keeps data in memory for a while (queued writes) shares it
  // instead of copying it.
  virtual absl::Status InsertShared(const Digest& d,
                                    std::shared_ptr<const std::string> data) {
    return Insert(d, *data);
  }

  // Whether chunk `d` is present right now (a hint: it may be evicted next).
  virtual bool Contains(const Digest& d) = 0;

  // A file descriptor holding chunk `d` (of `size` bytes) at its
  // offset(), for zero-copy replies; nullptr when the chunk is not in a file (a
  // miss, a queued write, or a cache that keeps no files).
  virtual std::shared_ptr<CachedFile> OpenChunk(const Digest& d,
                                                uint64_t size) {
    (void)d;
    (void)size;
    return nullptr;
  }
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_CHUNK_CACHE_H_
