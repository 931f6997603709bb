#include "fuse/layer_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/buffer_pool.h"
#include "core/json_writer.h"
#include "core/log.h"
#include "core/lower_layers.h"
#include "core/thread_priority.h"
#include "fuse/status_errno.h"

namespace lazypull {
namespace {

constexpr absl::string_view kWhiteoutPrefix = ".wh.";
constexpr absl::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr absl::string_view kStateDirName = ".stargz-snapshotter";
constexpr size_t kMaxRead = 1 << 20;

const char* const kOpaqueXattrs[] = {"trusted.overlay.opaque",
                                     "user.overlay.opaque"};

LayerFs* Fs(fuse_req_t req) {
  return static_cast<LayerFs*>(fuse_req_userdata(req));
}

mode_t TypeBits(EntryType t) {
  switch (t) {
    case EntryType::kDir:
      return S_IFDIR;
    case EntryType::kReg:
      return S_IFREG;
    case EntryType::kSymlink:
      return S_IFLNK;
    case EntryType::kChar:
      return S_IFCHR;
    case EntryType::kBlock:
      return S_IFBLK;
    case EntryType::kFifo:
      return S_IFIFO;
    default:
      return S_IFREG;
  }
}

}  // namespace

LayerFs::LayerFs(std::shared_ptr<CachedLayer> layer, LayerFsOptions options)
    : layer_(std::move(layer)),
      index_(layer_->index()),
      options_(std::move(options)) {
  const size_t n = index_.inodes().size();
  children_.resize(n);
  listing_.resize(n);
  whiteout_.assign(n, false);
  opaque_.assign(n, false);
  replaced_.assign(n, false);
  lowers_bottom_first_.assign(options_.lower_dirs.rbegin(),
                              options_.lower_dirs.rend());
  const auto& dirents = index_.dirents();
  // Which directories hide the layers below them (before any is asked of
  // the lower layers: a directory's opacity hides its descendants there).
  for (uint32_t dir = 0; dir < n; ++dir) {
    if (index_.inode(dir).type != EntryType::kDir) continue;
    for (uint32_t d : index_.Children(dir)) {
      const Dirent& de = dirents[d];
      absl::string_view name = de.name;
      if (name == kOpaqueMarker) {
        opaque_[dir] = true;
        continue;
      }
      if (!absl::StartsWith(name, kWhiteoutPrefix) ||
          index_.inode(de.inode).type == EntryType::kDir) {
        continue;
      }
      // The layer has its own X beside ".wh.X": the whiteout hides the
      // lower X, which for a directory means this one is opaque (whiteouts
      // apply to the lower layers only, OCI image-spec); a non-directory X
      // hides the lower one by itself.
      absl::string_view target = name.substr(kWhiteoutPrefix.size());
      if (target.empty() || target == "." || target == "..") continue;
      if (std::optional<uint32_t> own = index_.Lookup(dir, target)) {
        const Dirent& x = dirents[*own];
        if (!x.hardlink && index_.inode(x.inode).type == EntryType::kDir) {
          opaque_[x.inode] = true;
          replaced_[x.inode] = true;
        }
      }
    }
  }
  for (uint32_t dir = 0; dir < n; ++dir) {
    if (index_.inode(dir).type != EntryType::kDir) continue;
    std::vector<Child>& kids = children_[dir];
    std::optional<int> lower_has_dir;  // asked once per directory
    for (uint32_t d : index_.Children(dir)) {
      const Dirent& de = dirents[d];
      absl::string_view name = de.name;
      if (name == kOpaqueMarker) continue;
      // The state directory's name at the root is this mount's: a layer's
      // own entry there is shadowed for lookups, so it is not listed either
      // (a listing and a lookup must agree on what a name is).
      if (dir == LayerIndex::kRoot && name == kStateDirName) continue;
      if (absl::StartsWith(name, kWhiteoutPrefix) &&
          index_.inode(de.inode).type != EntryType::kDir) {
        absl::string_view target = name.substr(kWhiteoutPrefix.size());
        // ".wh.", ".wh..", ".wh..." name nothing a whiteout could hide.
        if (target.empty() || target == "." || target == "..") continue;
        // (Beside its own X: see above.)
        if (index_.Lookup(dir, target)) continue;
        // Whiteouts are marked by inode: one whose inode has other names (a
        // hostile hardlink to or from a real file) would turn them into
        // whiteouts too, so it is dropped.
        if (de.hardlink || index_.inode(de.inode).nlink > 1) continue;
        // In a stack, one in a directory no lower layer shows here (none
        // has it, or this layer's opacity hides theirs) hides nothing.
        if (options_.stacked) {
          if (!lower_has_dir) {
            struct stat st;
            lower_has_dir =
                !HidesLower(dir, /*whiteouts=*/true) &&
                        LowerDir(index_.Path(index_.inode(dir).dirent), &st)
                    ? 1
                    : 0;
          }
          if (*lower_has_dir == 0) continue;
        }
        whiteout_[de.inode] = true;
        kids.push_back({target, de.inode, d});
        continue;
      }
      kids.push_back({name, de.inode, d});
    }
    std::sort(kids.begin(), kids.end(),
              [](const Child& a, const Child& b) { return a.name < b.name; });
    std::vector<Child>& listed = listing_[dir];
    listed = kids;
    std::sort(listed.begin(), listed.end(), [](const Child& a, const Child& b) {
      return a.dirent < b.dirent;
    });
  }
  // Implied directories: the attributes the layers below give them.
  if (options_.stacked) {
    for (uint32_t i = 0; i < n; ++i) {  // the root too (no "./" entry)
      const Inode& in = index_.inode(i);
      if (!in.implicit || in.type != EntryType::kDir) continue;
      struct stat st;
      if (!HidesLower(i, /*whiteouts=*/false) &&
          LowerDir(index_.Path(in.dirent), &st)) {
        implied_[i] = {static_cast<uint32_t>(st.st_mode & 07777), st.st_uid,
                       st.st_gid, st.st_mtim};
      }
    }
  }
  known_ = std::make_unique<std::atomic<bool>[]>(n);
  state_dir_ino_ = n + 1;
  state_file_ino_ = n + 2;
  state_file_name_ = options_.state_name + ".json";
}

bool LayerFs::HidesLower(uint32_t dir, bool whiteouts) const {
  if (whiteouts ? opaque_[dir] : replaced_[dir]) return true;
  const auto& dirents = index_.dirents();
  for (uint32_t x = dir; x != LayerIndex::kRoot;) {
    const uint32_t de = index_.inode(x).dirent;
    if (de == LayerIndex::kNoDirent) break;
    x = dirents[de].parent;
    if (opaque_[x]) return true;
  }
  return false;
}

fuse_ino_t LayerFs::ParentIno(fuse_ino_t ino) const {
  if (ino == FUSE_ROOT_ID || ino > index_.inodes().size()) {
    return FUSE_ROOT_ID;  // the root, and the state directory in it
  }
  const uint32_t de = index_.inode(static_cast<uint32_t>(ino - 1)).dirent;
  if (de == LayerIndex::kNoDirent) return FUSE_ROOT_ID;
  return index_.dirents()[de].parent + 1;
}

bool LayerFs::LowerDir(const std::string& path, struct stat* st) const {
  absl::StatusOr<LowerEntry> e = FindInLowers(lowers_bottom_first_, path);
  if (!e.ok() || !S_ISDIR(e->st.st_mode)) return false;
  *st = e->st;
  return true;
}

const LayerFs::Child* LayerFs::Find(uint32_t dir,
                                    absl::string_view name) const {
  const auto& kids = children_[dir];
  auto it = std::lower_bound(
      kids.begin(), kids.end(), name,
      [](const Child& c, absl::string_view n) { return c.name < n; });
  if (it == kids.end() || it->name != name) return nullptr;
  return &*it;
}

LayerFs::~LayerFs() { StopPushing(); }

void LayerFs::StartPushing(fuse_session* se) {
  std::lock_guard<std::mutex> life(push_life_mu_);
  // (Not while `on_open` records a workload: every access is to be seen.)
  if (!options_.push_pages || options_.on_open || pusher_.joinable()) return;
  push_se_ = se;
  {
    absl::MutexLock l(&push_mu_);
    push_stop_ = false;
    push_exited_ = false;
  }
  pusher_ = std::thread([this] {
    PushLoop();
    absl::MutexLock l(&push_mu_);
    push_exited_ = true;
  });
  layer_->SetFillObserver(
      [this](uint32_t chunk, const std::shared_ptr<const std::string>& bytes) {
        OnFill(chunk, bytes);
      });
  pushing_.store(true);
}

void LayerFs::StopPushing(const std::function<void()>& unblock) {
  std::lock_guard<std::mutex> life(push_life_mu_);
  if (!pusher_.joinable()) return;
  pushing_.store(false);
  layer_->SetFillObserver(nullptr);  // (waits for calls under way)
  bool exited;
  {
    absl::MutexLock l(&push_mu_);
    push_stop_ = true;
    exited = push_mu_.AwaitWithTimeout(absl::Condition(&push_exited_),
                                       absl::Milliseconds(500));
  }
  if (!exited && unblock) unblock();
  pusher_.join();
  absl::MutexLock l(&push_mu_);
  push_queue_.clear();
  push_retry_.clear();
  push_queued_ = 0;
}

void LayerFs::Known(fuse_ino_t ino) {
  if (ino < 1 || ino >= state_dir_ino_) return;
  const uint32_t i = static_cast<uint32_t>(ino - 1);
  if (known_[i].exchange(true, std::memory_order_relaxed)) return;
  if (!pushing_.load(std::memory_order_relaxed)) return;
  const Inode& n = index_.inode(i);
  if (n.type != EntryType::kReg || whiteout_[i] || n.size == 0 ||
      n.size > options_.push_listed_max) {
    return;
  }
  // Only bytes this mount fetched (a program walking the tree while the
  // layer streams in reads them next); a listing of a warm layer pushes
  // nothing (`find /` would otherwise read every small file into memory).
  for (uint32_t c = n.first_chunk; c < n.first_chunk + n.num_chunks; ++c) {
    if (!layer_->FetchedHere(c)) return;
  }
  Enqueue(PushJob{i, 0, nullptr, n.size});
}

void LayerFs::OnFill(uint32_t chunk,
                     const std::shared_ptr<const std::string>& bytes) {
  const Chunk& c = index_.chunks()[chunk];
  if (!known_[c.inode].load(std::memory_order_relaxed) || bytes->empty()) {
    return;
  }
  Enqueue(PushJob{c.inode, c.file_offset, bytes, bytes->size()});
}

void LayerFs::Enqueue(PushJob job) {
  absl::MutexLock l(&push_mu_);
  if (push_stop_) return;
  if (push_queued_ + job.size > options_.push_queue_bytes) {
    push_dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  push_queued_ += job.size;
  push_queue_.push_back(std::move(job));
}

void LayerFs::PushLoop() {
  NameThisThread("lp-push");
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(push_mu_) {
    return push_stop_ || !push_queue_.empty();
  };
  while (true) {
    PushJob job;
    {
      absl::MutexLock l(&push_mu_);
      while (true) {
        if (push_stop_) return;
        if (!push_retry_.empty() &&
            push_retry_.front().not_before <= absl::Now()) {
          job = std::move(push_retry_.front());
          push_retry_.pop_front();
          break;
        }
        if (!push_queue_.empty()) {
          job = std::move(push_queue_.front());
          push_queue_.pop_front();
          break;
        }
        if (push_retry_.empty()) {
          push_mu_.Await(absl::Condition(&ready));
        } else {
          push_mu_.AwaitWithDeadline(absl::Condition(&ready),
                                     push_retry_.front().not_before);
        }
      }
    }
    std::optional<PushJob> again = Push(job);
    absl::MutexLock l(&push_mu_);
    if (again) {
      again->not_before =
          absl::Now() + absl::Milliseconds(1 << (again->attempts - 1));
      push_retry_.push_back(std::move(*again));  // (still counted)
    } else {
      push_queued_ -= job.size;
    }
  }
}

std::optional<LayerFs::PushJob> LayerFs::Push(const PushJob& job) {
  constexpr int kAttempts = 8;  // (1 + 2 + ... + 64 = 127 ms at most)
  const fuse_ino_t ino = job.inode + 1;
  // The kernel copies the bytes into the file's pages (waiting for any a
  // read holds). Not spliced: libfuse would log every refusal.
  auto store = [&](const char* data) {
    fuse_bufvec bv = FUSE_BUFVEC_INIT(job.size);
    bv.buf[0].mem = const_cast<char*>(data);
    const int rc = fuse_lowlevel_notify_store(
        push_se_, ino, static_cast<off_t>(job.offset), &bv, FUSE_BUF_NO_SPLICE);
    if (rc == 0) {
      pushed_bytes_.fetch_add(job.size, std::memory_order_relaxed);
      return true;
    }
    if (rc != -ENOENT || job.attempts + 1 >= kAttempts) {
      push_dropped_.fetch_add(1, std::memory_order_relaxed);
      return true;  // (done with it)
    }
    return false;
  };
  if (job.bytes != nullptr) {
    if (store(job.bytes->data())) return std::nullopt;
    PushJob again = job;
    ++again.attempts;
    return again;
  }
  // A whole small file, if every chunk of it is cached (or queued to be
  // written: a file background fetch brought in a moment ago).
  std::shared_ptr<std::string> buf =
      BufferPool::Default().Get(static_cast<size_t>(job.size));
  absl::StatusOr<bool> cached =
      layer_->ReadCached(job.inode, 0, absl::MakeSpan(*buf));
  // (Evicted, or a cache file gone: reads come to the server instead.)
  if (!cached.ok() || !*cached || store(buf->data())) return std::nullopt;
  // Again later, from these bytes.
  PushJob again = job;
  again.bytes = std::move(buf);
  ++again.attempts;
  return again;
}

void LayerFs::RecordError(const std::string& message) {
  absl::MutexLock l(&mu_);
  if (last_error_.empty()) last_error_ = message;
}

void LayerFs::MarkComplete() {
  absl::MutexLock l(&mu_);
  complete_ = true;
  last_error_.clear();
}

std::string LayerFs::StateJson() const {
  std::string error;
  bool complete;
  {
    absl::MutexLock l(&mu_);
    error = last_error_;
    complete = complete_;
  }
  // (Chunk extents leave out the TOC, the footer and, in zstd:chunked, the
  // tar headers' frames: a complete layer had read ~93% of its blob.)
  const uint64_t size = layer_->reader().blob_size();
  return FormatState(
      std::move(error), options_.state_digest, size,
      complete ? size : std::min(size, layer_->fetched_blob_bytes()));
}

namespace {

// `n`, moved back (at most 3 bytes) to the start of a UTF-8 character of
// `s`. REQUIRES: n <= s.size().
size_t CharBoundary(const std::string& s, size_t n) {
  for (int i = 0; i < 3 && n > 0 && n < s.size() &&
                  (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80;
       ++i) {
    --n;
  }
  return n;
}

}  // namespace

std::string LayerFs::FormatState(std::string error, absl::string_view digest,
                                 uint64_t size, uint64_t fetched) {
  // Each byte of the message takes 1 to 6 bytes of JSON (\u00XX): more than
  // kStateFileSize bytes of it can never fit.
  if (error.size() > kStateFileSize) {
    error.resize(CharBoundary(error, kStateFileSize));
  }
  for (;;) {
    JsonWriter w;
    w.BeginObject();
    w.Key("error").String(error);
    w.Key("digest").String(digest);
    w.Key("size").Uint(size);
    w.Key("fetchedSize").Uint(fetched);
    w.Key("fetchedPercent")
        .Double(size == 0 ? 100.0
                          : 100.0 * static_cast<double>(fetched) /
                                static_cast<double>(size));
    w.EndObject();
    std::string json = w.Release();
    if (json.size() < kStateFileSize || error.empty()) {
      json.resize(std::max(json.size() + 1, kStateFileSize), ' ');
      json.back() = '\n';
      return json;
    }
    // Too long: cut the message by a sixth of the excess (never more than
    // needed by much) at a character boundary, and retry.
    const size_t cut = (json.size() - kStateFileSize) / 6 + 1;
    error.resize(
        CharBoundary(error, error.size() - std::min(error.size(), cut)));
  }
}

void LayerFs::Stat(fuse_ino_t ino, struct stat* st) const {
  memset(st, 0, sizeof(*st));
  st->st_ino = ino;
  st->st_blksize = 4096;
  if (IsStateDir(ino)) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    st->st_size = 4096;
    return;
  }
  if (IsStateFile(ino)) {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = static_cast<off_t>(kStateFileSize);
    clock_gettime(CLOCK_REALTIME, &st->st_mtim);
    st->st_ctim = st->st_atim = st->st_mtim;
    return;
  }
  const uint32_t i = static_cast<uint32_t>(ino - 1);
  const Inode& n = index_.inode(i);
  st->st_nlink = n.nlink;
  st->st_uid = n.uid;
  st->st_gid = n.gid;
  st->st_mtim.tv_sec = st->st_atim.tv_sec = st->st_ctim.tv_sec = n.mtime_sec;
  st->st_mtim.tv_nsec = st->st_atim.tv_nsec = st->st_ctim.tv_nsec =
      n.mtime_nsec;
  if (whiteout_[i]) {
    st->st_mode = S_IFCHR;
    st->st_rdev = makedev(0, 0);
    return;
  }
  // (Empty unless the layer is stacked and implies directories: every stat
  // comes here.)
  if (auto it = implied_.empty() ? implied_.end() : implied_.find(i);
      it != implied_.end()) {
    st->st_uid = it->second.uid;
    st->st_gid = it->second.gid;
    st->st_mtim = st->st_atim = st->st_ctim = it->second.mtime;
    st->st_mode = S_IFDIR | it->second.mode;
    st->st_size = 4096;
    st->st_blocks = 8;
    return;
  }
  // A symlink's permission bits mean nothing and read 0777 everywhere (a
  // tar may carry others: Python's tarfile writes 0644).
  st->st_mode = TypeBits(n.type) |
                (n.type == EntryType::kSymlink ? 0777 : n.mode & 07777);
  switch (n.type) {
    case EntryType::kReg:
      st->st_size = static_cast<off_t>(n.size);
      break;
    case EntryType::kSymlink:
      st->st_size = static_cast<off_t>(n.symlink.size());
      break;
    case EntryType::kDir:
      st->st_size = 4096;
      break;
    case EntryType::kChar:
    case EntryType::kBlock:
      st->st_rdev = makedev(n.dev_major, n.dev_minor);
      break;
    default:
      break;
  }
  // 512-byte units of whole 4 KiB blocks, as ext4 (where a full pull puts
  // the files) counts them, so that du agrees; a symlink short enough to
  // live in the inode takes none.
  st->st_blocks = n.type == EntryType::kSymlink && st->st_size < 60
                      ? 0
                      : (st->st_size + 4095) / 4096 * 8;
}

struct LayerFsOpsImpl {
  static void Entry(fuse_req_t req, LayerFs* fs, fuse_ino_t ino) {
    struct fuse_entry_param e;
    memset(&e, 0, sizeof(e));
    e.ino = ino;
    const bool volatile_attr = fs->IsStateFile(ino);
    e.attr_timeout = volatile_attr ? 0 : fs->options_.attr_timeout;
    e.entry_timeout = fs->options_.entry_timeout;
    fs->Stat(ino, &e.attr);
    fuse_reply_entry(req, &e);
    fs->Known(ino);  // (after the reply, which is what makes it known)
  }

  static void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(parent)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (fs->IsStateDir(parent)) {
      if (fs->state_file_name_ == name) {
        Entry(req, fs, fs->state_file_ino_);
      } else {
        fuse_reply_err(req, ENOENT);
      }
      return;
    }
    if (fs->IsStateFile(parent)) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    const uint32_t dir = static_cast<uint32_t>(parent - 1);
    if (fs->index_.inode(dir).type != EntryType::kDir || fs->whiteout_[dir]) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    if (parent == FUSE_ROOT_ID && kStateDirName == name) {
      Entry(req, fs, fs->state_dir_ino_);
      return;
    }
    const LayerFs::Child* c = fs->Find(dir, name);
    if (c == nullptr) {
      // A cacheable negative entry: the layer never changes.
      struct fuse_entry_param e;
      memset(&e, 0, sizeof(e));
      e.ino = 0;
      e.entry_timeout = fs->options_.entry_timeout;
      fuse_reply_entry(req, &e);
      return;
    }
    Entry(req, fs, c->inode + 1);
  }

  static void Forget(fuse_req_t req, fuse_ino_t, uint64_t) {
    fuse_reply_none(req);
  }

  static void ForgetMulti(fuse_req_t req, size_t, struct fuse_forget_data*) {
    fuse_reply_none(req);
  }

  static void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(ino)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    struct stat st;
    fs->Stat(ino, &st);
    fuse_reply_attr(req, &st,
                    fs->IsStateFile(ino) ? 0 : fs->options_.attr_timeout);
  }

  static void ReadLink(fuse_req_t req, fuse_ino_t ino) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(ino) || ino >= fs->state_dir_ino_ ||
        fs->index_.inode(static_cast<uint32_t>(ino - 1)).type !=
            EntryType::kSymlink) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    fuse_reply_readlink(
        req, fs->index_.inode(static_cast<uint32_t>(ino - 1)).symlink.c_str());
  }

  static void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(ino)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    struct stat st;
    fs->Stat(ino, &st);
    if (!S_ISDIR(st.st_mode)) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
  }

  static void DoReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                        bool plus) {
    LayerFs* fs = Fs(req);
    std::string buf(std::min<size_t>(size, kMaxRead), '\0');
    size_t used = 0;
    // Entry k: 0 ".", 1 "..", 2.. children.
    std::vector<std::pair<std::string, fuse_ino_t>> synthetic;
    const std::vector<LayerFs::Child>* kids = nullptr;
    if (fs->IsStateDir(ino)) {
      synthetic.emplace_back(fs->state_file_name_, fs->state_file_ino_);
    } else {
      kids = &fs->Listing(static_cast<uint32_t>(ino - 1));
    }
    const size_t count = kids ? kids->size() : synthetic.size();
    std::vector<fuse_ino_t> listed;  // readdirplus: entries the kernel gets
    for (size_t k = static_cast<size_t>(off); k < count + 2; ++k) {
      std::string name;
      fuse_ino_t child;
      if (k == 0) {
        name = ".";
        child = ino;
      } else if (k == 1) {
        name = "..";
        child = fs->ParentIno(ino);  // (what readdir(3) reports for it)
      } else if (kids) {
        const LayerFs::Child& c = (*kids)[k - 2];
        name.assign(c.name.data(), c.name.size());
        child = c.inode + 1;
      } else {
        name = synthetic[k - 2].first;
        child = synthetic[k - 2].second;
      }
      size_t need;
      if (plus) {
        struct fuse_entry_param e;
        memset(&e, 0, sizeof(e));
        if (k >= 2) {
          e.ino = child;
          // The state file's attributes are never cached: its mtime is
          // what keeps its page fresh (see StateJson).
          e.attr_timeout =
              fs->IsStateFile(child) ? 0 : fs->options_.attr_timeout;
          e.entry_timeout = fs->options_.entry_timeout;
          fs->Stat(child, &e.attr);
        } else {
          e.attr.st_ino = child;
          e.attr.st_mode = S_IFDIR;
        }
        need =
            fuse_add_direntry_plus(req, buf.data() + used, buf.size() - used,
                                   name.c_str(), &e, static_cast<off_t>(k + 1));
      } else {
        struct stat st;
        memset(&st, 0, sizeof(st));
        st.st_ino = child;
        if (k >= 2) {
          fs->Stat(child, &st);
        } else {
          st.st_mode = S_IFDIR;
        }
        need = fuse_add_direntry(req, buf.data() + used, buf.size() - used,
                                 name.c_str(), &st, static_cast<off_t>(k + 1));
      }
      if (need > buf.size() - used) break;
      used += need;
      if (plus && k >= 2) listed.push_back(child);
    }
    fuse_reply_buf(req, buf.data(), used);
    for (fuse_ino_t child : listed) fs->Known(child);
  }

  static void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                      fuse_file_info*) {
    DoReadDir(req, ino, size, off, false);
  }

  static void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size,
                          off_t off, fuse_file_info*) {
    DoReadDir(req, ino, size, off, true);
  }

  static void ReleaseDir(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
    fuse_reply_err(req, 0);
  }

  static void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(ino)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
      fuse_reply_err(req, EROFS);
      return;
    }
    if (fs->skip_open_.load(std::memory_order_relaxed)) {
      fuse_reply_err(req, ENOSYS);  // the kernel opens files itself from now
      return;
    }
    struct stat st;
    fs->Stat(ino, &st);
    if (S_ISDIR(st.st_mode)) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    if (fs->IsStateFile(ino)) {
      fi->direct_io = 1;  // its content changes as the layer is fetched
    } else {
      fi->keep_cache = 1;
      if (fs->options_.on_open) {
        fs->options_.on_open(static_cast<uint32_t>(ino - 1));
      }
    }
    fuse_reply_open(req, fi);
  }

  static void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                   fuse_file_info*) {
    LayerFs* fs = Fs(req);
    if (fs->IsStateFile(ino)) {
      std::string json = fs->StateJson();
      size_t start = std::min(json.size(), static_cast<size_t>(off));
      size_t len = std::min(size, json.size() - start);
      fuse_reply_buf(req, json.data() + start, len);
      return;
    }
    const uint32_t i = static_cast<uint32_t>(ino - 1);
    if (!fs->Valid(ino) || ino >= fs->state_dir_ino_ ||
        fs->index_.inode(i).type != EntryType::kReg || fs->whiteout_[i]) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    if (fs->options_.splice_reads) {
      // Warm path: every chunk is in a cache file; let the kernel move the
      // bytes from those files to /dev/fuse.
      std::optional<std::vector<CachedLayer::FilePiece>> pieces =
          fs->layer_->Locate(i, static_cast<uint64_t>(off),
                             std::min(size, kMaxRead));
      if (pieces && !pieces->empty()) {
        std::vector<char> mem(sizeof(fuse_bufvec) +
                              pieces->size() * sizeof(fuse_buf));
        fuse_bufvec* bv = reinterpret_cast<fuse_bufvec*>(mem.data());
        bv->count = pieces->size();
        bv->idx = 0;
        bv->off = 0;
        for (size_t k = 0; k < pieces->size(); ++k) {
          fuse_buf& b = bv->buf[k];
          b = fuse_buf{};
          b.size = (*pieces)[k].len;
          b.flags = static_cast<fuse_buf_flags>(
              FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY);
          b.fd = (*pieces)[k].file->fd();
          b.pos = static_cast<off_t>((*pieces)[k].offset);
        }
        int rc = fuse_reply_data(req, bv,
                                 fs->options_.splice_move
                                     ? FUSE_BUF_SPLICE_MOVE
                                     : static_cast<fuse_buf_copy_flags>(0));
        if (rc == 0) return;
        // The reply failed to send; the request is gone either way.
        LogWarning("splice reply failed (", -rc, ")");
        return;
      }
      if (pieces && pieces->empty()) {
        fuse_reply_buf(req, nullptr, 0);  // at or past end of file
        return;
      }
    }
    // Cold path (a fill, or a chunk still queued for the cache): a buffer
    // from the fill path's bounded pool (not zero-filled, not faulted in
    // afresh), sized to what the file has left, rather than one kept per
    // FUSE thread (16 x 1 MiB of resident memory for the life of the mount).
    const uint64_t file_size = fs->index_.inode(i).size;
    const uint64_t left =
        file_size - std::min(file_size, static_cast<uint64_t>(off));
    std::shared_ptr<std::string> pooled =
        BufferPool::Default().Get(static_cast<size_t>(
            std::min<uint64_t>(std::min(size, kMaxRead), left)));
    std::string& buf = *pooled;
    absl::StatusOr<size_t> n = fs->layer_->Read(
        i, static_cast<uint64_t>(off), absl::MakeSpan(buf.data(), buf.size()));
    if (!n.ok()) {
      std::string msg =
          absl::StrCat("layer ", fs->options_.state_digest, ": read of \"",
                       fs->index_.Path(fs->index_.inode(i).dirent),
                       "\" at offset ", off, " failed: ", n.status().message());
      LogError(msg);
      fs->RecordError(msg);
      fuse_reply_err(req, StatusToErrno(n.status()));
      return;
    }
    fuse_reply_buf(req, buf.data(), *n);
  }

  static void Release(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
    fuse_reply_err(req, 0);
  }

  static void StatFs(fuse_req_t req, fuse_ino_t) {
    LayerFs* fs = Fs(req);
    struct statvfs sv;
    memset(&sv, 0, sizeof(sv));
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    sv.f_blocks = (fs->index_.total_file_bytes() + 4095) / 4096;
    sv.f_files = fs->index_.inodes().size();
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
  }

  // Xattrs of an inode as presented (opaque markers included).
  static std::vector<std::pair<std::string, std::string>> Xattrs(
      LayerFs* fs, fuse_ino_t ino) {
    std::vector<std::pair<std::string, std::string>> out;
    if (ino >= fs->state_dir_ino_) return out;
    const uint32_t i = static_cast<uint32_t>(ino - 1);
    if (fs->whiteout_[i]) return out;
    for (const auto& kv : fs->index_.Xattrs(i)) out.push_back(kv);
    if (fs->opaque_[i]) {
      for (const char* k : kOpaqueXattrs) {
        if (!fs->options_.user_overlay_xattrs &&
            absl::string_view(k).substr(0, 5) == "user.") {
          continue;
        }
        out.emplace_back(k, "y");
      }
    }
    return out;
  }

  static void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name,
                       size_t size) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(ino)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    for (const auto& [k, v] : Xattrs(fs, ino)) {
      if (k != name) continue;
      if (size == 0) {
        fuse_reply_xattr(req, v.size());
      } else if (size < v.size()) {
        fuse_reply_err(req, ERANGE);
      } else {
        fuse_reply_buf(req, v.data(), v.size());
      }
      return;
    }
    fuse_reply_err(req, ENODATA);
  }

  static void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(ino)) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    std::string names;
    for (const auto& kv : Xattrs(fs, ino)) {
      names.append(kv.first);
      names.push_back('\0');
    }
    if (size == 0) {
      fuse_reply_xattr(req, names.size());
    } else if (size < names.size()) {
      fuse_reply_err(req, ERANGE);
    } else {
      fuse_reply_buf(req, names.data(), names.size());
    }
  }

  static void Access(fuse_req_t req, fuse_ino_t ino, int mask) {
    LayerFs* fs = Fs(req);
    if (!fs->Valid(ino)) {
      fuse_reply_err(req, ENOENT);
    } else {
      fuse_reply_err(req, (mask & W_OK) ? EROFS : 0);
    }
  }

  static void Init(void* userdata, struct fuse_conn_info* conn) {
    LayerFs* fs = static_cast<LayerFs*>(userdata);
    constexpr unsigned kSkipOpen =
        FUSE_CAP_NO_OPEN_SUPPORT | FUSE_CAP_AUTO_INVAL_DATA;
    if (fs->options_.skip_open && !fs->options_.on_open &&
        (conn->capable & kSkipOpen) == kSkipOpen) {
      conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
      fs->skip_open_.store(true);
    }
    conn->max_readahead = kMaxRead;
    conn->max_read = kMaxRead;
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) {
      conn->want |= FUSE_CAP_CACHE_SYMLINKS;
    }
    if (conn->capable & FUSE_CAP_READDIRPLUS) {
      conn->want |= FUSE_CAP_READDIRPLUS;
    }
    if (conn->capable & FUSE_CAP_SPLICE_WRITE) {
      conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
    }
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) {
      conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    }
    // The kernel enforces the layer's POSIX ACLs (system.posix_acl_access,
    // read through getxattr) as a real filesystem would; without it only
    // the mode bits count (default_permissions), and a named user an ACL
    // lets in gets EACCES.
    if (conn->capable & FUSE_CAP_POSIX_ACL) {
      conn->want |= FUSE_CAP_POSIX_ACL;
    }
  }

  // Every mutating operation: the layer is read-only.
  static void SetAttr(fuse_req_t req, fuse_ino_t, struct stat*, int,
                      fuse_file_info*) {
    fuse_reply_err(req, EROFS);
  }
  static void MkNod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) {
    fuse_reply_err(req, EROFS);
  }
  static void MkDir(fuse_req_t req, fuse_ino_t, const char*, mode_t) {
    fuse_reply_err(req, EROFS);
  }
  static void Unlink(fuse_req_t req, fuse_ino_t, const char*) {
    fuse_reply_err(req, EROFS);
  }
  static void SymLink(fuse_req_t req, const char*, fuse_ino_t, const char*) {
    fuse_reply_err(req, EROFS);
  }
  static void Rename(fuse_req_t req, fuse_ino_t, const char*, fuse_ino_t,
                     const char*, unsigned int) {
    fuse_reply_err(req, EROFS);
  }
  static void Link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) {
    fuse_reply_err(req, EROFS);
  }
  static void Write(fuse_req_t req, fuse_ino_t, const char*, size_t, off_t,
                    fuse_file_info*) {
    fuse_reply_err(req, EROFS);
  }
  static void Create(fuse_req_t req, fuse_ino_t, const char*, mode_t,
                     fuse_file_info*) {
    fuse_reply_err(req, EROFS);
  }
  static void SetXattr(fuse_req_t req, fuse_ino_t, const char*, const char*,
                       size_t, int) {
    fuse_reply_err(req, EROFS);
  }
  static void RemoveXattr(fuse_req_t req, fuse_ino_t, const char*) {
    fuse_reply_err(req, EROFS);
  }
};

const fuse_lowlevel_ops& LayerFs::Ops() {
  static const fuse_lowlevel_ops ops = [] {
    fuse_lowlevel_ops o;
    memset(&o, 0, sizeof(o));
    o.init = LayerFsOpsImpl::Init;
    o.lookup = LayerFsOpsImpl::Lookup;
    o.forget = LayerFsOpsImpl::Forget;
    o.forget_multi = LayerFsOpsImpl::ForgetMulti;
    o.getattr = LayerFsOpsImpl::GetAttr;
    o.readlink = LayerFsOpsImpl::ReadLink;
    o.opendir = LayerFsOpsImpl::OpenDir;
    o.readdir = LayerFsOpsImpl::ReadDir;
    o.readdirplus = LayerFsOpsImpl::ReadDirPlus;
    o.releasedir = LayerFsOpsImpl::ReleaseDir;
    o.open = LayerFsOpsImpl::Open;
    o.read = LayerFsOpsImpl::Read;
    o.release = LayerFsOpsImpl::Release;
    o.statfs = LayerFsOpsImpl::StatFs;
    o.getxattr = LayerFsOpsImpl::GetXattr;
    o.listxattr = LayerFsOpsImpl::ListXattr;
    o.access = LayerFsOpsImpl::Access;
    o.setattr = LayerFsOpsImpl::SetAttr;
    o.mknod = LayerFsOpsImpl::MkNod;
    o.mkdir = LayerFsOpsImpl::MkDir;
    o.unlink = LayerFsOpsImpl::Unlink;
    o.rmdir = LayerFsOpsImpl::Unlink;
    o.symlink = LayerFsOpsImpl::SymLink;
    o.rename = LayerFsOpsImpl::Rename;
    o.link = LayerFsOpsImpl::Link;
    o.write = LayerFsOpsImpl::Write;
    o.create = LayerFsOpsImpl::Create;
    o.setxattr = LayerFsOpsImpl::SetXattr;
    o.removexattr = LayerFsOpsImpl::RemoveXattr;
    return o;
  }();
  return ops;
}

}  // namespace lazypull
