#include "core/extractor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <list>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/decompressor.h"
#include "core/errno_status.h"
#include "core/node_writer.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

constexpr absl::string_view kWhiteoutPrefix = ".wh.";
constexpr absl::string_view kOpaqueMarker = ".wh..wh..opq";

using Fd = ScopedFd;

// Open directories by inode, the most recently used kept: opening a
// directory walks down from its nearest cached ancestor, not from the root,
// so a deep tree (a hostile TOC may nest thousands of levels) extracts in
// time linear in its size, with a bounded number of descriptors.
// Thread-safe.
class DirFds {
 public:
  static constexpr size_t kCapacity = 256;

  // A descriptor of `ino` if cached (a duplicate), else an invalid Fd.
  Fd Get(uint32_t ino) {
    absl::MutexLock l(&mu_);
    auto it = map_.find(ino);
    if (it == map_.end()) return Fd();
    lru_.splice(lru_.begin(), lru_, it->second);
    return Fd(fcntl(it->second->second.get(), F_DUPFD_CLOEXEC, 0));
  }
  // Caches a duplicate of `fd` as `ino`'s.
  void Put(uint32_t ino, int fd) {
    Fd copy(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (copy.get() < 0) return;  // out of descriptors: just not cached
    absl::MutexLock l(&mu_);
    if (map_.contains(ino)) return;
    lru_.emplace_front(ino, std::move(copy));
    map_[ino] = lru_.begin();
    if (lru_.size() > kCapacity) {
      map_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }

 private:
  absl::Mutex mu_;
  std::list<std::pair<uint32_t, Fd>> lru_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::list<std::pair<uint32_t, Fd>>::iterator>
      map_ ABSL_GUARDED_BY(mu_);
};

// A member claiming more than a writer makes (64 MiB of small files and
// the chunk that crossed the mark) is decoded per chunk instead.
constexpr uint64_t kMaxSharedMember = uint64_t{128} << 20;

class Extractor {
 public:
  Extractor(const LayerReader& r, const ExtractOptions& o)
      : r_(r), idx_(r.index()), opts_(o) {
    // Members holding chunks of several files (--min-chunk-size): how much
    // of each to decode for all of them.
    absl::flat_hash_map<uint64_t, uint32_t> count;
    for (const Chunk& c : idx_.chunks()) {
      if (!c.zeros) ++count[c.blob_offset];
    }
    for (const Chunk& c : idx_.chunks()) {
      if (c.zeros || count[c.blob_offset] < 2) continue;
      uint64_t& need = shared_members_[c.blob_offset];
      need = std::max(need, c.inner_offset + c.size);
    }
    // (A hostile TOC's innerOffset must not size a buffer.)
    absl::erase_if(shared_members_,
                   [](const auto& m) { return m.second > kMaxSharedMember; });
  }

  absl::Status Run(const std::string& dir);

 private:
  // What Run does once DIR is known empty.
  absl::Status Write();
  // Opens the directory inode `ino` (already created) from its nearest open
  // ancestor (DirFds), opening each directory on the way without following
  // symlinks.
  absl::StatusOr<Fd> OpenDir(uint32_t ino);
  absl::Status MakeDirs();
  absl::Status WriteFiles();
  // The shared member a worker decoded last: each of its files' chunks then
  // costs a copy, not an inflate of the member from its start (quadratic in
  // the files per member: 64 MiB members took minutes).
  struct DecodedMember {
    uint64_t blob_offset = UINT64_MAX;
    std::string plain;
  };
  absl::Status WriteFile(uint32_t dirent, std::string* buf,
                         DecodedMember* member);
  // Chunk `ci` (of a shared member) into `buf`, verified.
  absl::Status ReadSharedChunk(uint32_t ci, std::string* buf,
                               DecodedMember* member);
  absl::Status MakeOthers();
  absl::Status MakeOther(uint32_t dirent);
  absl::Status ApplyAttrs(int dirfd, const std::string& name, uint32_t ino,
                          bool is_dir);
  absl::Status Fail(int err, absl::string_view op, uint32_t dirent) const {
    return ErrnoToStatus(err, absl::StrCat(op, " \"", idx_.Path(dirent), "\""));
  }

  const LayerReader& r_;
  const LayerIndex& idx_;
  const ExtractOptions opts_;
  std::string root_path_;
  Fd root_;
  std::vector<uint32_t> dir_order_;  // directory inodes, parents first
  DirFds dir_fds_;
  // Blob offset of a member shared by several chunks -> the uncompressed
  // bytes they need from it.
  absl::flat_hash_map<uint64_t, uint64_t> shared_members_;
};

absl::StatusOr<Fd> Extractor::OpenDir(uint32_t ino) {
  std::vector<uint32_t> chain;  // dirents from `ino` up, before `cur`'s
  Fd cur;
  for (uint32_t i = ino;; i = idx_.dirents()[idx_.inode(i).dirent].parent) {
    if (i == LayerIndex::kRoot) {
      cur = Fd(fcntl(root_.get(), F_DUPFD_CLOEXEC, 0));
      break;
    }
    cur = dir_fds_.Get(i);
    if (cur.get() >= 0) break;
    chain.push_back(idx_.inode(i).dirent);
  }
  if (cur.get() < 0) return ErrnoToStatus(errno, "dup");
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    int fd = openat(cur.get(), idx_.dirents()[*it].name.c_str(),
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return Fail(errno, "open directory", *it);
    cur = Fd(fd);
    dir_fds_.Put(idx_.dirents()[*it].inode, cur.get());
  }
  return cur;
}

absl::Status Extractor::MakeDirs() {
  // Breadth-first from the root: parents before children.
  dir_order_.push_back(LayerIndex::kRoot);
  for (size_t i = 0; i < dir_order_.size(); ++i) {
    uint32_t dir = dir_order_[i];
    ASSIGN_OR_RETURN(Fd dfd, OpenDir(dir));
    for (uint32_t d : idx_.Children(dir)) {
      const Dirent& de = idx_.dirents()[d];
      if (de.hardlink || idx_.inode(de.inode).type != EntryType::kDir) continue;
      if (mkdirat(dfd.get(), de.name.c_str(), 0700) != 0) {
        return Fail(errno, "mkdir", d);
      }
      dir_order_.push_back(de.inode);
    }
  }
  return absl::OkStatus();
}

absl::Status Extractor::ApplyAttrs(int dirfd, const std::string& name,
                                   uint32_t ino, bool is_dir) {
  const Inode& n = idx_.inode(ino);
  const std::string display = idx_.Path(n.dirent);
  if (opts_.same_owner) {
    RETURN_IF_ERROR(SetNodeOwner(dirfd, name, n.uid, n.gid, display));
  }
  RETURN_IF_ERROR(SetNodeXattrs(dirfd, name, idx_.Xattrs(ino), display));
  if (is_dir) {
    // xattrs through /proc/self/fd so that a symlink is never followed.
    std::string proc = absl::StrCat("/proc/self/fd/", dirfd, "/", name);
    // Opaque: it holds the marker, or the layer also whites out its own
    // name (".wh.X" beside "X/": the lower X goes, this one replaces it;
    // whiteouts apply to the lower layers only, OCI image-spec).
    bool opaque = false;
    if (ino != LayerIndex::kRoot) {
      std::optional<uint32_t> w = idx_.Lookup(
          idx_.dirents()[n.dirent].parent, absl::StrCat(kWhiteoutPrefix, name));
      opaque = w && idx_.inode(idx_.dirents()[*w].inode).type !=
                        EntryType::kDir;  // a whiteout, as the mount has it
    }
    for (uint32_t d : idx_.Children(ino)) {
      opaque = opaque || idx_.dirents()[d].name == kOpaqueMarker;
    }
    if (opaque &&
        lsetxattr(proc.c_str(), "trusted.overlay.opaque", "y", 1, 0) != 0) {
      return Fail(errno, "set trusted.overlay.opaque on", n.dirent);
    }
  }
  if (n.type != EntryType::kSymlink) {
    RETURN_IF_ERROR(SetNodeMode(dirfd, name, n.mode, display));
  }
  if (!n.implicit) {
    RETURN_IF_ERROR(
        SetNodeTimes(dirfd, name, n.mtime_sec, n.mtime_nsec, display));
  }
  return absl::OkStatus();
}

absl::Status Extractor::ReadSharedChunk(uint32_t ci, std::string* buf,
                                        DecodedMember* member) {
  const Chunk& c = idx_.chunks()[ci];
  if (member->blob_offset != c.blob_offset) {
    member->blob_offset = UINT64_MAX;
    std::string extent(c.blob_end - c.blob_offset, '\0');
    RETURN_IF_ERROR(r_.source().ReadAt(c.blob_offset, absl::MakeSpan(extent)));
    member->plain.resize(shared_members_.at(c.blob_offset));
    absl::Status st = DecompressRange(r_.compression(), extent, 0,
                                      absl::MakeSpan(member->plain));
    if (!st.ok()) {
      return absl::DataLossError(
          absl::StrCat(r_.DescribeChunk(ci), ": ", st.message()));
    }
    member->blob_offset = c.blob_offset;
  }
  buf->assign(member->plain, c.inner_offset, c.size);
  return r_.VerifyChunk(ci, *buf);
}

absl::Status Extractor::WriteFile(uint32_t d, std::string* buf,
                                  DecodedMember* member) {
  const Dirent& de = idx_.dirents()[d];
  const Inode& n = idx_.inode(de.inode);
  ASSIGN_OR_RETURN(Fd dfd, OpenDir(de.parent));
  Fd fd(openat(dfd.get(), de.name.c_str(),
               O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (fd.get() < 0) return Fail(errno, "create", d);
  const auto& chunks = idx_.chunks();
  for (uint32_t ci = n.first_chunk; ci < n.first_chunk + n.num_chunks; ++ci) {
    const Chunk& c = chunks[ci];
    if (c.zeros) {
      // A hole: ftruncate below gives the file its size (nothing the size
      // of the chunk is allocated: a TOC may declare any size).
      RETURN_IF_ERROR(r_.VerifyZerosChunk(ci));
      continue;
    }
    if (shared_members_.contains(c.blob_offset)) {
      RETURN_IF_ERROR(ReadSharedChunk(ci, buf, member));
    } else {
      buf->resize(c.size);
      RETURN_IF_ERROR(r_.ReadChunk(ci, absl::MakeSpan(*buf)));
    }
    if (int err = WriteAllAt(fd.get(), buf->data(), c.size, c.file_offset)) {
      return Fail(err, "write", d);
    }
  }
  if (ftruncate(fd.get(), static_cast<off_t>(n.size)) != 0) {
    return Fail(errno, "truncate", d);
  }
  return ApplyAttrs(dfd.get(), de.name, de.inode, false);
}

absl::Status Extractor::WriteFiles() {
  std::vector<uint32_t> files;
  for (uint32_t d = 0; d < idx_.dirents().size(); ++d) {
    const Dirent& de = idx_.dirents()[d];
    if (!de.hardlink && idx_.inode(de.inode).type == EntryType::kReg &&
        idx_.inode(de.inode).dirent == d &&
        !absl::StartsWith(de.name, kWhiteoutPrefix)) {  // MakeOthers' job
      files.push_back(d);
    }
  }
  std::atomic<size_t> next{0};
  absl::Mutex mu;
  absl::Status first;
  auto work = [&] {
    std::string buf;
    DecodedMember member;
    while (true) {
      size_t i = next.fetch_add(1);
      if (i >= files.size()) return;
      absl::Status st = WriteFile(files[i], &buf, &member);
      if (!st.ok()) {
        absl::MutexLock l(&mu);
        if (first.ok()) first = st;
        next.store(files.size());
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < std::max(1, opts_.threads); ++t)
    threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  return first;
}

absl::Status Extractor::MakeOthers() {
  // Two passes: every other node, then the hardlinks (a hardlink's target
  // may be a symlink or a device listed after it).
  for (int pass = 0; pass < 2; ++pass) {
    for (uint32_t d = 0; d < idx_.dirents().size(); ++d) {
      if (idx_.dirents()[d].hardlink == (pass == 0)) continue;
      RETURN_IF_ERROR(MakeOther(d));
    }
  }
  return absl::OkStatus();
}

absl::Status Extractor::MakeOther(uint32_t d) {
  const Dirent& de = idx_.dirents()[d];
  const Inode& n = idx_.inode(de.inode);
  const bool whiteout =
      n.type != EntryType::kDir && absl::StartsWith(de.name, kWhiteoutPrefix);
  if (!whiteout && !de.hardlink &&
      (n.type == EntryType::kDir ||
       (n.type == EntryType::kReg && n.dirent == d))) {
    return absl::OkStatus();  // made already
  }
  if (de.name == kOpaqueMarker) return absl::OkStatus();  // a parent xattr
  std::string target;
  if (whiteout) {
    target = de.name.substr(kWhiteoutPrefix.size());
    // ".wh." and ".wh.." name nothing a whiteout could hide.
    if (target.empty() || target == "." || target == "..") {
      return absl::OkStatus();
    }
    if (idx_.Lookup(de.parent, target).has_value()) return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(Fd dfd, OpenDir(de.parent));
  if (whiteout) {
    if (mknodat(dfd.get(), target.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0) {
      return Fail(errno, "make whiteout for", d);
    }
    return absl::OkStatus();
  }
  if (de.hardlink) {
    const Dirent& t = idx_.dirents()[n.dirent];
    ASSIGN_OR_RETURN(Fd tfd, OpenDir(t.parent));
    if (linkat(tfd.get(), t.name.c_str(), dfd.get(), de.name.c_str(), 0) != 0) {
      return Fail(errno, "hardlink", d);
    }
    return absl::OkStatus();
  }
  int rc = 0;
  switch (n.type) {
    case EntryType::kSymlink:
      rc = symlinkat(n.symlink.c_str(), dfd.get(), de.name.c_str());
      break;
    case EntryType::kChar:
      rc = mknodat(dfd.get(), de.name.c_str(), S_IFCHR | 0600,
                   makedev(n.dev_major, n.dev_minor));
      break;
    case EntryType::kBlock:
      rc = mknodat(dfd.get(), de.name.c_str(), S_IFBLK | 0600,
                   makedev(n.dev_major, n.dev_minor));
      break;
    case EntryType::kFifo:
      rc = mkfifoat(dfd.get(), de.name.c_str(), 0600);
      break;
    case EntryType::kReg:
      // A regular inode whose defining name was replaced: make it empty.
      rc = mknodat(dfd.get(), de.name.c_str(), S_IFREG | 0600, 0);
      break;
    default:
      break;
  }
  if (rc != 0) return Fail(errno, "create", d);
  return ApplyAttrs(dfd.get(), de.name, de.inode, false);
}

absl::Status Extractor::Run(const std::string& dir) {
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", dir));
  }
  root_ = Fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (root_.get() < 0) return ErrnoToStatus(errno, absl::StrCat("open ", dir));
  {
    DIR* dp = fdopendir(dup(root_.get()));
    if (dp == nullptr) return ErrnoToStatus(errno, absl::StrCat("read ", dir));
    bool empty = true;
    while (struct dirent* e = readdir(dp)) {
      if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
        empty = false;
      }
    }
    closedir(dp);
    if (!empty) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir,
                       " is not empty: extract writes a layer into an empty "
                       "directory"));
    }
  }
  absl::Status st = Write();
  if (!st.ok()) {
    // DIR is left empty, as it was (a disk that filled up left a partial
    // tree - a file cut short, no attributes - and a second try was refused
    // for DIR not being empty).
    std::vector<std::string> names;
    if (DIR* dp = fdopendir(dup(root_.get()))) {
      rewinddir(dp);  // (a dup shares the offset the first listing left)
      while (struct dirent* e = readdir(dp)) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
          names.emplace_back(e->d_name);
        }
      }
      closedir(dp);
    }
    for (const std::string& n : names) {
      (void)RemoveTreeAt(root_.get(), n, absl::StrCat(dir, "/", n));
    }
  }
  return st;
}

absl::Status Extractor::Write() {
  RETURN_IF_ERROR(MakeDirs());
  RETURN_IF_ERROR(WriteFiles());
  RETURN_IF_ERROR(MakeOthers());
  // Directories last, deepest first, so their times and modes stick. Each
  // gets its attributes through its parent (as every other node: a mode
  // without search permission must not stop the times that follow, for a
  // user without CAP_DAC_OVERRIDE); the parent is opened as the ".." of the
  // directory (cached by then: its own child's parent), so a chain of
  // directories is walked up one step each, not from the root.
  for (auto it = dir_order_.rbegin(); it != dir_order_.rend(); ++it) {
    const uint32_t ino = *it;
    if (ino == LayerIndex::kRoot) {
      RETURN_IF_ERROR(ApplyAttrs(root_.get(), "", ino, true));
      continue;
    }
    const Dirent& de = idx_.dirents()[idx_.inode(ino).dirent];
    Fd parent = de.parent == LayerIndex::kRoot
                    ? Fd(fcntl(root_.get(), F_DUPFD_CLOEXEC, 0))
                    : dir_fds_.Get(de.parent);
    if (parent.get() < 0) {
      ASSIGN_OR_RETURN(Fd fd, OpenDir(ino));
      parent = Fd(openat(fd.get(), "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (parent.get() >= 0) {
        dir_fds_.Put(de.parent, parent.get());
      } else {
        ASSIGN_OR_RETURN(parent, OpenDir(de.parent));
      }
    }
    RETURN_IF_ERROR(ApplyAttrs(parent.get(), de.name, ino, true));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ExtractLayer(const LayerReader& reader, const std::string& dir,
                          const ExtractOptions& options) {
  Extractor e(reader, options);
  return e.Run(dir);
}

}  // namespace lazypull
