// Chunk packs: the chunk cache's storage for small chunks, many per file, so
// that caching a layer of thousands of small files costs a few inodes, not
// one per chunk (creating an inode is the dearest part of storing a small
// chunk; on a journal-less ext4 it scans every recently deleted inode).
//
// A pack is two append-only files under the cache's packs/ directory:
//   <name>.pack   chunk bytes back to back, as they were written
//   <name>.idx    one 48-byte record per chunk: sha256 (32 bytes), offset in
//                 the .pack and size (little-endian u64 each), appended only
//                 after the chunk's bytes were written
// <name> is "<pid>-<unique>": one writer (one process's cache) appends to a
// pack; any process reads any pack. A record is never rewritten, so a
// reader that has consumed an index up to byte N only reads past N later.
// A crash can leave a record whose bytes never reached the disk: the cache
// decides which records it trusts (disk_chunk_cache.h), never this file.
//
// Thread-safety: a PackWriter is used by one thread at a time (its owner
// serializes); ReadPackIndex is safe from any thread.
#ifndef LAZYPULL_CORE_CHUNK_PACK_H_
#define LAZYPULL_CORE_CHUNK_PACK_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "core/block_io.h"
#include "core/digest.h"

namespace lazypull {

struct PackRecord {
  Digest digest;
  uint64_t offset = 0;  // in the .pack
  uint64_t size = 0;
};

inline constexpr size_t kPackRecordSize = 48;
// A pack index larger than this is refused: no pack holds a million chunks.
inline constexpr uint64_t kMaxPackIndexBytes =
    uint64_t{1 << 20} * kPackRecordSize;

class PackWriter {
 public:
  // Creates <dir>/<name>.pack and <name>.idx (neither may exist).
  static absl::StatusOr<std::unique_ptr<PackWriter>> Create(
      const std::string& dir, const std::string& name);
  ~PackWriter();
  PackWriter(const PackWriter&) = delete;
  PackWriter& operator=(const PackWriter&) = delete;

  // Writes `data` at the end of the pack and returns where it starts. It is
  // not a cached chunk until Commit indexes it.
  absl::StatusOr<uint64_t> Append(absl::string_view data);
  // Appends the records to the index, in one write.
  absl::Status Commit(absl::Span<const PackRecord> records);

  const std::string& name() const { return name_; }
  // Bytes appended so far.
  uint64_t size() const { return size_; }
  // Whether the pack was unlinked (evicted by any process): a writer must
  // then start a new one.
  bool Unlinked() const;

 private:
  PackWriter(std::string name, int data_fd, int index_fd)
      : name_(std::move(name)), data_fd_(data_fd), index_fd_(index_fd) {}

  const std::string name_;
  const int data_fd_;
  const int index_fd_;
  uint64_t size_ = 0;
  std::unique_ptr<BlockIo> io_ = BlockIo::NewPosix();
};

// A new pack name for this process: "<pid>-<unique>".
std::string NewPackName();
// The pid in a pack's name (0 if it has none).
pid_t PackWriterPid(absl::string_view name);

// Appends the whole records of index file `path` that start at or after
// byte `from` to `out`, and returns the byte after the last of them (a
// partly written record at the end is left for a later call). NotFound if
// the file is gone.
absl::StatusOr<uint64_t> ReadPackIndex(const std::string& path, uint64_t from,
                                       std::vector<PackRecord>* out);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_CHUNK_PACK_H_
