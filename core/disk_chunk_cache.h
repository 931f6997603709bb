// DiskChunkCache: the persistent, bounded, content-addressed chunk cache.
//
// Layout under the cache directory:
//   packs/<pid>-<n>.pack|.idx chunks up to `pack_max_chunk` bytes (the
//                             small files that make up most of an image),
//                             appended to this process's pack and indexed
//                             by digest (core/chunk_pack.h): a few inodes
//                             for a whole layer instead of one per chunk
//   chunks/<hex[0:2]>/<hex>   one file per larger chunk, named by the
//                             sha256 of its bytes
//   tmp/<hex>.<pid>.<seq>     chunk files being written
//   lock                      flock(2)ed while evicting or pruning
//   synced                    "every chunk file changed before time T is on
//                             disk" (T in ns, written after a syncfs)
// Either way the cache is content-addressed: a chunk shared by files,
// layers, images or processes is stored and fetched once.
//
// Commit protocol: a chunk's bytes are written to tmp/ (pwrite: faster than
// io_uring for buffered writes of new files here, see the .cc) and renamed
// into chunks/, or appended to the pack and then indexed; a crash (kill -9
// mid-fill) can leave a stray tmp file (removed at the next Open once its
// writer is dead) or pack bytes no record points at (dead space, freed with
// the pack). Durability is not paid on the write path (a syncfs per batch
// flushes the whole filesystem: on a busy host, everyone's dirty data):
// instead, a chunk file is trusted only if this process wrote it, or it
// changed before the `synced` mark (a syncfs taken every `sync_every` while
// writing). Any other file (written by another live process, or by one that
// died before a syncfs, so possibly torn by a power loss) is re-hashed on
// its first use in this process and dropped (refetched) if its content is
// not its name. A pack's
// records are trusted the same way by the pack's ctime when they are read
// (index first, then the pack's stat: every record read was written before
// that ctime); a packed chunk that fails its hash takes its whole pack with
// it (a pack torn once is suspect throughout). Either way no byte that is
// not the chunk's is ever served. With `sync` the old protocol applies
// instead (one syncfs per batch before the renames or index records). On
// load and on every read the file size must equal the chunk size (the
// TOC's); full re-hashing of everything is on request (VerifyAll, `lazypull
// cache verify`).
//
// Writes are asynchronous: Insert queues the (verified) bytes for a writer
// thread and returns; until written they are served from memory. Reads of
// cached chunks go through BlockIo; OpenChunk hands out a file descriptor for
// zero-copy replies (splice).
//
// Bound: `capacity` bytes; when exceeded, least-recently-used chunks are
// unlinked down to 90% of it; a packed chunk goes with its whole pack (packs
// are at most a sixteenth of the capacity, so this stays fine-grained, and
// a pack's chunks were written together, so they age together). Dead space
// in packs (a chunk two processes both wrote, a dropped record) is not
// counted against the capacity and is freed with its pack. Eviction never
// breaks a reader: an fd already open keeps the data, and a chunk evicted
// before it is read is a miss (the read path fetches it again).
//
// Several processes may share one directory: publication is an atomic
// rename of identical content or an index record appended after the bytes
// it points at (each process appends to packs of its own), eviction an
// unlink (safe against readers),
// eviction and pruning are serialized by flock(lock), and each process learns
// of the others' chunks when it looks one up (packs: their indexes are read
// on from where this process left them, at most every 100 ms, on a miss)
// and by rescanning the directory every `rescan_every` inserts and, with a
// budget, every eighth of it written, so the byte budget covers every
// process's chunks (N processes overshoot it by about N/8 at most).
//
// Thread-safety: all public methods may be called concurrently.
#ifndef LAZYPULL_CORE_DISK_CHUNK_CACHE_H_
#define LAZYPULL_CORE_DISK_CHUNK_CACHE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/chunk_cache.h"
#include "core/chunk_pack.h"

namespace lazypull {

struct DiskChunkCacheOptions {
  uint64_t capacity = 0;  // bytes of chunk data; 0 = unbounded
  // syncfs each batch before publishing it (default off: see above).
  bool sync = false;
  // With sync off: how often the writer takes a syncfs and moves the
  // `synced` mark forward while chunks are being written (default 30 s).
  int64_t sync_every_seconds = 30;
  // When the disk is full (ENOSPC, EDQUOT), the writer evicts the least
  // recently used fifth to make room, at most this often (default 10 s).
  absl::Duration full_disk_eviction_every = absl::Seconds(10);
  uint64_t max_pending_bytes = 4 << 20;  // queued writes held in memory
  // Once a chunk is queued, the writer waits up to `write_linger` for
  // `linger_bytes` to gather (or a Flush) before it writes them as one
  // batch: a layer streaming in costs a wake-up and an index write per
  // batch, not per chunk (queued chunks are served from memory meanwhile).
  // Zero: write at once.
  absl::Duration write_linger = absl::Milliseconds(2);
  uint64_t linger_bytes = 1 << 20;
  uint64_t rescan_every = 4096;  // inserts between directory scans
  size_t max_open_files = 512;   // cached read descriptors
  // Chunks of at most this many bytes go into packs; 0 = none (one file
  // per chunk, the layout before packs; both are always read).
  uint64_t pack_max_chunk = 4 << 20;
  // A pack is closed for appends past this size (and past capacity / 16).
  uint64_t pack_size = 64 << 20;
};

struct CacheUsage {
  uint64_t chunks = 0;
  uint64_t bytes = 0;
  uint64_t packed_chunks = 0;  // of `chunks`, those in packs
  uint64_t packs = 0;          // pack files holding them
};

struct CacheCounters {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t inserts = 0;    // chunks written
  uint64_t evictions = 0;  // chunks unlinked to stay in budget
  uint64_t dropped = 0;    // files found torn/foreign and removed
  uint64_t rehashed = 0;   // untrusted files hashed on first use
};

struct CacheVerifyReport {
  uint64_t checked = 0;
  uint64_t removed = 0;  // corrupt chunks found and removed
  // Chunks gone before their turn: removed with a corrupt chunk's pack (a
  // pack goes whole), or evicted meanwhile by a mount using the cache.
  uint64_t gone = 0;
};

class DiskChunkCache final : public ChunkCache {
 public:
  // Returns before the directory's files are indexed (a stat per file: the
  // writer thread does it first): lookups meanwhile check the file itself,
  // Usage() waits for it.
  static absl::StatusOr<std::unique_ptr<DiskChunkCache>> Open(
      const std::string& dir, const DiskChunkCacheOptions& options = {});
  ~DiskChunkCache() override;  // flushes queued writes

  absl::StatusOr<bool> Read(const Digest& d, uint64_t size, uint64_t offset,
                            absl::Span<char> out) override;
  absl::Status Insert(const Digest& d, absl::string_view data) override;
  absl::Status InsertShared(const Digest& d,
                            std::shared_ptr<const std::string> data) override;
  bool Contains(const Digest& d) override;

  // An fd for chunk `d` (of `size` bytes) if it is on disk, for zero-copy.
  std::shared_ptr<CachedFile> OpenChunk(const Digest& d,
                                        uint64_t size) override;

  // Waits until every queued write is on disk.
  void Flush();
  // syncfs, then moves the synced mark to the time before it. The writer
  // does this every sync_every_seconds while writing; never at close, where
  // a syncfs on a busy host (everyone's dirty data) would delay unmounting.
  void SyncAndMark();
  CacheUsage Usage();
  CacheCounters counters() const;
  // Evicts least-recently-used chunks until at most `bytes` remain.
  absl::Status Prune(uint64_t bytes);
  // Re-hashes every chunk file; removes those whose content is not their name.
  absl::StatusOr<CacheVerifyReport> VerifyAll();

  const std::string& dir() const { return dir_; }
  // Where chunk `d` is (or would be) as a file of its own.
  std::string ChunkPath(const Digest& d) const;
  // Where pack `name`'s files are: PackPath(name) + ".pack" / ".idx".
  std::string PackPath(const std::string& name) const;

 private:
  struct Pack {
    std::string name;
    bool ours = false;                 // written by this object
    uint64_t index_read = 0;           // bytes of its index consumed
    std::vector<Digest> digests;       // the chunks indexed from it
    std::shared_ptr<CachedFile> file;  // read descriptor, opened on use
    bool gone = false;    // evicted or dropped: its records are forgotten
    bool sealed = false;  // its writer is dead and its index all read
    // Records of chunks indexed from another pack (two processes that
    // filled one cache at once both wrote them): bytes on disk that no
    // lookup uses. Counted in dup_bytes_ once the pack is sealed (while its
    // writer lives, that process accounts for it), until the pack goes.
    uint64_t dup_bytes = 0;
    bool dup_counted = false;
  };
  struct Meta {
    uint64_t size;
    std::list<Digest>::iterator lru;
    // Content known to be the chunk's (see the header comment).
    bool trusted = false;
    std::shared_ptr<Pack> pack;  // null: a file of its own
    uint64_t pack_offset = 0;
  };
  struct Job {
    Digest digest;
    std::shared_ptr<const std::string> data;
  };

  DiskChunkCache(std::string dir, DiskChunkCacheOptions options)
      : dir_(std::move(dir)), options_(options) {}
  absl::Status Load();
  void WriterLoop();
  // Writes a batch to tmp/, makes it durable with one syncfs, publishes it.
  absl::Status WriteChunks(const std::vector<Job>& jobs);
  // Writes chunks to files of their own (WriteChunks' file half).
  absl::Status WriteFiles(const std::vector<const Job*>& jobs);
  // Appends chunks to this object's pack (starting a new one when it is
  // full or was evicted) and indexes them.
  absl::Status WritePacked(const std::vector<const Job*>& jobs);
  // Adds or refreshes an entry. REQUIRES: mu_ held.
  void Track(const Digest& d, uint64_t size, bool trusted,
             std::shared_ptr<Pack> pack = nullptr, uint64_t pack_offset = 0)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reads the packs' indexes on from where they were left, and forgets
  // packs that are gone. One scan at a time: with `wait` false, returns at
  // once if one is running.
  void ScanPacks(bool wait);
  // ScanPacks(false), if none ran in the last 100 ms.
  void ScanPacksOnMiss();
  // OpenChunk, saying in *from (if given) which pack holds the chunk (null:
  // a file of its own).
  std::shared_ptr<CachedFile> OpenChunkFrom(const Digest& d, uint64_t size,
                                            std::shared_ptr<Pack>* from);
  // The open file of a packed chunk (null if its pack is gone or torn).
  std::shared_ptr<CachedFile> OpenPacked(const Digest& d, uint64_t size,
                                         std::shared_ptr<Pack> pack,
                                         uint64_t offset, bool trusted);
  // Forgets every chunk indexed from `pack`; returns how many.
  size_t ForgetPack(Pack& pack) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets a pack's chunks and unlinks it; `evicted` counts them as
  // evictions, else as dropped.
  void DropPack(const std::shared_ptr<Pack>& pack, bool evicted);
  // Whether a file changed at `ctime` is covered by the synced mark.
  bool Synced(const struct timespec& ctime) const;
  // Hashes `size` bytes at `offset` of an open file; false if they are not
  // chunk `d`.
  bool Rehash(int fd, uint64_t offset, const Digest& d, uint64_t size);

  void Forget(const Digest& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Finds a file another process may have published.
  bool Discover(const Digest& d, uint64_t size);
  // Removes chunk `d`'s file of its own, and its entry if that is the file's.
  void DropFile(const Digest& d);
  // Removes what chunk `d` was read from: `pack` (OpenChunkFrom's), or with
  // none its own file.
  void DropFrom(const Digest& d, const std::shared_ptr<Pack>& pack);
  absl::Status EvictTo(uint64_t target);
  void Rescan();
  // Returns once the first scan (on the writer thread) is done.
  void WaitScanned();

  const std::string dir_;
  const DiskChunkCacheOptions options_;
  int lock_fd_ = -1;

  absl::Mutex mu_;
  absl::flat_hash_map<Digest, Meta> index_ ABSL_GUARDED_BY(mu_);
  std::list<Digest> lru_ ABSL_GUARDED_BY(mu_);  // front = most recent
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Duplicate records' bytes in packs (Pack::dup_bytes): part of the
  // cache's size on disk, reclaimed with their packs.
  uint64_t dup_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<Digest, std::shared_ptr<CachedFile>> files_
      ABSL_GUARDED_BY(mu_);
  std::list<Digest> files_lru_ ABSL_GUARDED_BY(mu_);
  // Queued writes, readable until written.
  absl::flat_hash_map<Digest, std::shared_ptr<const std::string>> pending_
      ABSL_GUARDED_BY(mu_);
  uint64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // The first scan, on the writer thread, is done: index_ holds every file
  // that was there at Open.
  bool scanned_ ABSL_GUARDED_BY(mu_) = false;
  // Rescans in progress, and the chunks forgotten (dropped, evicted) since
  // the first of them began: a scan that saw their files must not re-add them.
  int scans_running_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<Digest> forgotten_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Pack>> packs_
      ABSL_GUARDED_BY(mu_);
  // Packs with an open read descriptor, most recently opened first (at most
  // max_open_files).
  std::list<std::shared_ptr<Pack>> open_packs_ ABSL_GUARDED_BY(mu_);

  // The pack this object appends to (writes come from the writer thread
  // and from callers writing inline under back-pressure).
  absl::Mutex pack_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::unique_ptr<PackWriter> pack_writer_ ABSL_GUARDED_BY(pack_mu_);
  std::shared_ptr<Pack> writing_pack_ ABSL_GUARDED_BY(pack_mu_);
  absl::Mutex scan_packs_mu_;
  std::atomic<int64_t> last_pack_scan_ns_{0};

  std::mutex q_mu_;
  std::condition_variable q_cv_;
  std::condition_variable q_done_cv_;
  std::deque<Job> queue_;
  uint64_t queued_bytes_ = 0;  // in queue_
  bool lingering_ = false;     // the writer waits for more (see options)
  int flushing_ = 0;           // Flush calls waiting: no lingering
  size_t writing_ = 0;
  bool stop_ = false;
  std::thread writer_;

  std::atomic<uint64_t> seq_{0};
  std::atomic<uint64_t> written_since_rescan_{0};  // bytes, by WriteChunks
  std::atomic<uint64_t> hits_{0}, misses_{0}, inserts_{0}, evictions_{0},
      dropped_{0}, rehashed_{0};
  // The synced mark read at Open (ns since the epoch; 0 = none).
  int64_t synced_before_ns_ = 0;
  // Chunks written since the last mark, and when it was taken.
  std::atomic<bool> unsynced_writes_{false};
  std::atomic<int64_t> last_mark_ns_{0};
  // The writer thread's: failed stores since the last warning about them.
  uint64_t store_failures_ = 0;
  absl::Time last_store_warning_ = absl::InfinitePast();
  absl::Time last_full_eviction_ = absl::InfinitePast();
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_DISK_CHUNK_CACHE_H_
