// DirChunkCache: a persistent ChunkCache of one file per chunk under a
// directory, content-addressed by the chunk's digest:
//   <dir>/chunks/<hex[0:2]>/<hex>
//
// A chunk is written to <dir>/tmp/ and renamed into place, so a reader (in
// this process or another lazypull process sharing the directory) sees a
// whole chunk or none; a file whose size is not the chunk's is dropped and
// reported as a miss. Several processes may share one directory: rename(2)
// is the only coordination needed, since equal names mean equal content.
//
// Thread-safety: all methods may be called concurrently.
#ifndef LAZYPULL_CORE_DIR_CHUNK_CACHE_H_
#define LAZYPULL_CORE_DIR_CHUNK_CACHE_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/chunk_cache.h"

namespace lazypull {

class DirChunkCache final : public ChunkCache {
 public:
  // Creates <dir>/chunks and <dir>/tmp if missing.
  static absl::StatusOr<std::unique_ptr<DirChunkCache>> Open(
      const std::string& dir);

  absl::StatusOr<bool> Read(const Digest& d, uint64_t size, uint64_t offset,
                            absl::Span<char> out) override;
  absl::Status Insert(const Digest& d, absl::string_view data) override;
  bool Contains(const Digest& d) override;

  std::string ChunkPath(const Digest& d) const;

 private:
  explicit DirChunkCache(std::string dir) : dir_(std::move(dir)) {}
  const std::string dir_;
  std::atomic<uint64_t> tmp_seq_{0};
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_DIR_CHUNK_CACHE_H_
