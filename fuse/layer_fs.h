// LayerFs: one layer served as a read-only filesystem through the libfuse3
// low-level API.
//
// Presentation (runtime.md §5, formats.md §1.5):
//  - FUSE inode = LayerIndex inode + 1 (root = FUSE_ROOT_ID); stable for a
//    given TOC. Hardlinks are one inode with the right link count.
//  - `.wh.X` is shown as a character device 0:0 named X (hidden when a real X
//    exists in the same directory); a directory holding `.wh..wh..opq` hides
//    it and reports xattrs trusted.overlay.opaque=y and user.overlay.opaque=y.
//    Landmarks and the TOC are not in the index, so never shown.
//  - `/.stargz-snapshotter/<name>.json` (reachable by lookup only, never
//    listed in the root) reports {error, digest, size, fetchedSize,
//    fetchedPercent} as the reference does.
//  - Long entry/attr timeouts and cached negative lookups (a layer is
//    immutable), keep_cache on open, 1 MiB reads. Every write answers EROFS.
//  - A directory lists its entries in the layer's (TOC) order, not sorted:
//    a program walking the tree reads the blob front to back, the way
//    prefetch and background fetch bring it.
//  - With push_pages (off by default: see there), verified bytes are pushed
//    into the kernel's page cache of files it knows, so that most reads of a
//    layer being fetched in the background never reach this server.
// The inode table is static, so lookup counts need no bookkeeping: forget
// frees nothing and replies none.
//
// Thread-safety: the callbacks run on libfuse's worker threads concurrently;
// LayerFs holds no lock across a fuse_reply_* (its shared mutable state is
// the CachedLayer, which is thread-safe, an error string under a mutex, and
// the pushes: per-inode atomic flags and a queue under a mutex, drained by a
// thread of its own that holds no lock while it pushes).
#ifndef LAZYPULL_FUSE_LAYER_FS_H_
#define LAZYPULL_FUSE_LAYER_FS_H_

#include <fuse3/fuse_lowlevel.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/cached_layer.h"

namespace lazypull {

struct LayerFsOptions {
  // The layer is one of a stack (an image mount): `lower_dirs` are the
  // layers below it, topmost first (empty for the bottom one). Then:
  //  - directories the layer only implies (a path beneath them, no entry of
  //    their own) take their mode, owner and times from the first lower
  //    layer that has them, as containerd's unpack copies them (else 0755,
  //    root, time 0);
  //  - whiteouts in a directory no lower layer has are not shown: they hide
  //    nothing, and overlayfs passes them through in a directory it does
  //    not merge (an entry nothing can open).
  bool stacked = false;
  std::vector<std::string> lower_dirs;
  // Basename of the state file: "<digest>" gives /.stargz-snapshotter/
  // <digest>.json. The layer's blob digest for registry mounts, its TOC
  // digest for --blob mounts.
  std::string state_name;
  // The digest reported in the state file.
  std::string state_digest;
  // Also report user.overlay.opaque=y on opaque directories (default true,
  // for rootless overlayfs with userxattr). Off when the layer is a lower
  // dir of a root overlayfs (trusted.* only), which would otherwise show the
  // user.* marker to the merged view.
  bool user_overlay_xattrs = true;
  double entry_timeout = 86400.0;
  double attr_timeout = 86400.0;
  // Reply to warm reads by splicing from the cache files (zero-copy) rather
  // than copying through a buffer.
  bool splice_reads = true;
  // Ask the kernel to move (steal) pages rather than copy them when
  // splicing (FUSE_BUF_SPLICE_MOVE); off by default: measured slower here
  // for page-cache pages, which cannot be stolen (bench/RESULTS.md).
  bool splice_move = false;
  // Called (on a FUSE thread, before the reply) with the index inode of
  // each regular file opened: how `optimize` records a workload's accesses.
  // May be empty.
  std::function<void(uint32_t inode)> on_open;
  // Spare the kernel a round trip per open and per close: the first open is
  // answered ENOSYS (FUSE_CAP_NO_OPEN_SUPPORT), after which the kernel opens
  // every file itself, keeps its page cache and sends no release. Needs the
  // kernel's auto_inval_data too (the state file's freshness, see
  // StateJson); ignored when `on_open` is set (every open must be seen) or
  // the kernel lacks either.
  bool skip_open = true;
  // Push verified bytes into the kernel's page cache (FUSE_NOTIFY_STORE) of
  // files the kernel knows (a lookup or a directory listing named them), so
  // that reading them costs no round trip through this server: what
  // prefetch, background fetch and read-ahead bring, as each chunk is
  // cached, and a file of at most `push_listed_max` bytes that this mount
  // fetched whole when a lookup or listing first names it (not one that was
  // cached already: listing a warm layer pushes nothing). Best effort: a push
  // the kernel refuses is dropped, and reads still come here for what it does
  // not hold. Takes effect with StartPushing.
  //
  // Off by default. The kernel's FUSE_NOTIFY_STORE takes each page's lock,
  // uninterruptibly; a page a read has locked stays locked until this
  // server answers that read. Alive, the server answers it and the push goes
  // on; killed (SIGKILL) while the pusher waits there, the process cannot
  // finish exiting, its /dev/fuse descriptor stays open, the connection is
  // never aborted, and the reader and the push wait for each other until
  // someone writes to the connection's fusectl `abort` (a clean-clone CI run
  // caught exactly that: cache_mount_test's SIGKILL rounds hung). Writing
  // that abort is what fuse/connection_watchdog.h exists for: a server that
  // pushes runs one (`lazypull mount` does, and pushes by default). Off
  // here, so that nothing pushes without one.
  bool push_pages = false;
  uint64_t push_listed_max = 1 << 20;
  // Bytes waiting to be pushed beyond which new pushes are dropped.
  uint64_t push_queue_bytes = 16 << 20;
};

class LayerFs {
 public:
  LayerFs(std::shared_ptr<CachedLayer> layer, LayerFsOptions options);

  // The callback table; `userdata` for fuse_session_new must be this.
  static const fuse_lowlevel_ops& Ops();

  // The state file's JSON as of now, padded with spaces to
  // kStateFileSize bytes (the error message cut to fit): its size never
  // changes, so a reader can never see it cut short by a size read a moment
  // earlier. Its mtime is the time of the stat and its attributes are never
  // cached (timeout 0 in lookups, getattr and readdirplus), so the kernel's
  // auto_inval_data drops its cached page at every read. One read() of the
  // whole file is one consistent snapshot; smaller reads may mix two, as
  // with direct_io.
  std::string StateJson() const;
  static constexpr size_t kStateFileSize = 4096;

  // The state file's bytes for these values, as StateJson describes.
  // REQUIRES: `digest` is a digest string (short enough that the JSON with
  // an empty error fits in kStateFileSize).
  static std::string FormatState(std::string error, absl::string_view digest,
                                 uint64_t size, uint64_t fetched);

  // Sets the state file's "error" (the last one reported wins).
  void RecordError(const std::string& message);
  // Every chunk of the layer is cached and verified (background fetch
  // completed it): the state file says 100% from now on, and the errors of
  // reads that failed on the way (since retried) are cleared.
  void MarkComplete();

  // Starts pushing pages (LayerFsOptions::push_pages; a no-op without it)
  // through `se`, the session serving this filesystem: a thread of its own,
  // fed by the layer's fill observer and by lookups and listings.
  // StopPushing() ends both, waiting for a push under way (which a read in
  // flight can hold up: call it while the session still serves, or once its
  // loop has ended but before its descriptor is closed); the destructor
  // calls it. Both may be called from any thread, StopPushing more than
  // once.
  // `unblock`, if given, is called when the pusher has not stopped within a
  // moment (a push waiting on a page that a read queued in the kernel holds,
  // with no FUSE thread left to answer it): FuseServer::AbortConnection.
  void StartPushing(fuse_session* se);
  void StopPushing(const std::function<void()>& unblock = nullptr);
  ~LayerFs();
  // Bytes the kernel took into its page cache, and pushes dropped (queue
  // full) or refused (a file the kernel had forgotten, say).
  uint64_t pushed_bytes() const { return pushed_bytes_.load(); }
  uint64_t pushes_dropped() const { return push_dropped_.load(); }

 private:
  friend struct LayerFsOpsImpl;

  struct Child {
    absl::string_view name;
    uint32_t inode;   // index inode
    uint32_t dirent;  // the entry that names it (its place in the TOC)
  };

  // Index inode for a FUSE ino, or -1 for the synthetic ones.
  bool IsStateDir(fuse_ino_t ino) const { return ino == state_dir_ino_; }
  bool IsStateFile(fuse_ino_t ino) const { return ino == state_file_ino_; }
  bool Valid(fuse_ino_t ino) const {
    return ino >= 1 && ino <= state_file_ino_;
  }
  void Stat(fuse_ino_t ino, struct stat* st) const;
  // A directory's visible children in the order the layer stores them
  // (the TOC's, which is the blob's): readdir lists them so, and a program
  // walking the tree (find, tar, cp -r, a scanner) reads files in the order
  // prefetch and background fetch bring them. (A tar written in name order,
  // as BuildKit and docker write layers, lists the same as sorted.)
  const std::vector<Child>& Listing(uint32_t dir) const {
    return listing_[dir];
  }
  const Child* Find(uint32_t dir, absl::string_view name) const;

  std::shared_ptr<CachedLayer> layer_;
  const LayerIndex& index_;
  const LayerFsOptions options_;
  std::vector<std::vector<Child>> children_;  // visible children, by name
  std::vector<std::vector<Child>> listing_;   // the same in TOC order
  std::vector<bool> whiteout_;                // index inode shown as 0:0
  std::vector<bool> opaque_;  // dir holds .wh..wh..opq or is replaced
  // Dir replaced: a ".wh.X" beside its own X (the lower X is deleted, not
  // only emptied).
  std::vector<bool> replaced_;
  std::vector<std::string> lowers_bottom_first_;  // lower_dirs reversed
  // Implied directories' attributes from lower_dirs, by inode.
  struct ImpliedAttrs {
    uint32_t mode = 0;
    uint32_t uid = 0, gid = 0;
    struct timespec mtime = {0, 0};
  };
  absl::flat_hash_map<uint32_t, ImpliedAttrs> implied_;
  // `path` as a directory of the merged lower layers (FindInLowers): true
  // and *st there; false if none shows one there (absent, a non-directory
  // or whiteout on the way, or an opaque directory above it).
  bool LowerDir(const std::string& path, struct stat* st) const;
  // Whether this layer hides what the lower layers have at directory `dir`:
  // an opaque or replaced directory above it, or `dir` itself replaced; for
  // whiteouts in it (`whiteouts`), `dir` itself opaque too. (A directory
  // only marked opaque keeps its own lower attributes, as containerd's
  // unpack empties it and keeps it; its descendants are new.)
  bool HidesLower(uint32_t dir, bool whiteouts) const;
  // The inode number of directory `ino`'s parent (the root's: itself).
  fuse_ino_t ParentIno(fuse_ino_t ino) const;
  // Whether open is answered ENOSYS (options_.skip_open, as Init found the
  // kernel).
  std::atomic<bool> skip_open_{false};
  fuse_ino_t state_dir_ino_;
  fuse_ino_t state_file_ino_;
  std::string state_file_name_;
  mutable absl::Mutex mu_;
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  bool complete_ ABSL_GUARDED_BY(mu_) = false;

  // Page pushes (see LayerFsOptions::push_pages).
  struct PushJob {
    uint32_t inode = 0;  // index inode
    uint64_t offset = 0;
    // The bytes at `offset`; null: the whole file, from the cache.
    std::shared_ptr<const std::string> bytes;
    uint64_t size = 0;  // what it counts against push_queue_bytes
    // A push the kernel refused (ENOENT) is tried again a few times, a
    // little later each: a lookup's or listing's reply instantiates its
    // inodes only once the process that asked runs again.
    int attempts = 0;
    absl::Time not_before = absl::InfinitePast();
  };
  // An entry for `ino` went to the kernel (a lookup, a listing).
  void Known(fuse_ino_t ino);
  void OnFill(uint32_t chunk, const std::shared_ptr<const std::string>& bytes);
  void Enqueue(PushJob job);
  void PushLoop();
  // Returns the job to try again later, if any.
  std::optional<PushJob> Push(const PushJob& job);
  // Per index inode: whether the kernel has been given an entry for it.
  std::unique_ptr<std::atomic<bool>[]> known_;
  std::atomic<bool> pushing_{false};
  fuse_session* push_se_ = nullptr;
  absl::Mutex push_mu_;
  std::deque<PushJob> push_queue_ ABSL_GUARDED_BY(push_mu_);
  std::deque<PushJob> push_retry_ ABSL_GUARDED_BY(push_mu_);
  uint64_t push_queued_ ABSL_GUARDED_BY(push_mu_) = 0;
  bool push_stop_ ABSL_GUARDED_BY(push_mu_) = false;
  bool push_exited_ ABSL_GUARDED_BY(push_mu_) = false;
  std::mutex push_life_mu_;  // Start/StopPushing
  std::thread pusher_;
  std::atomic<uint64_t> pushed_bytes_{0}, push_dropped_{0};
};

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_LAYER_FS_H_
