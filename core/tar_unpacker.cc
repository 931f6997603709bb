#include "core/tar_unpacker.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/errno_status.h"
#include "core/node_writer.h"
#include "core/status_macros.h"
#include "core/tar_path.h"
#include "core/toc.h"

namespace lazypull {
namespace {

constexpr absl::string_view kWhiteoutPrefix = ".wh.";
constexpr absl::string_view kOpaqueMarker = ".wh..wh..opq";
constexpr absl::string_view kAufsMetaPrefix = ".wh..wh.";

struct NodeMeta {
  uint64_t uid = 0, gid = 0;
  uint32_t mode = 0;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

NodeMeta MetaOf(const TarHeader& h) {
  NodeMeta m;
  m.uid = h.uid;
  m.gid = h.gid;
  m.mode = static_cast<uint32_t>(h.mode) & 07777;
  m.mtime_sec = h.mtime_sec;
  m.mtime_nsec = h.mtime_nsec;
  for (const auto& kv : h.xattrs) {
    if (!IsOverlayPrivateXattr(kv.first)) m.xattrs.push_back(kv);
  }
  return m;
}

bool HasOpaqueXattr(const NodeMeta& m) {
  for (const auto& [k, v] : m.xattrs) {
    if (IsOverlayOpaqueXattr(k, v)) return true;
  }
  return false;
}

class Unpacker {
 public:
  Unpacker(TarReader* tar, const TarUnpackOptions& o) : tar_(tar), opts_(o) {}

  absl::StatusOr<UnpackedLayer> Run(const std::string& dir) {
    root_ = ScopedFd(
        open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!root_.valid()) return ErrnoToStatus(errno, absl::StrCat("open ", dir));
    TarHeader h;
    while (true) {
      ASSIGN_OR_RETURN(bool more, tar_->Next(&h));
      if (!more) break;
      ++out_.entries;
      absl::Status st = Entry(h);
      if (!st.ok()) {
        return absl::Status(st.code(),
                            absl::StrCat("tar entry \"", NameForMessage(h.name),
                                         "\": ", st.message()));
      }
    }
    RETURN_IF_ERROR(FinishDirs());
    return std::move(out_);
  }

 private:
  absl::StatusOr<int> Parent(const std::vector<std::string>& comps) {
    std::vector<std::string> parent(comps.begin(), comps.end() - 1);
    std::string key = absl::StrJoin(parent, "/");
    if (!cached_.valid() || key != cached_key_) {
      cached_ = ScopedFd();
      ASSIGN_OR_RETURN(cached_, OpenDirBeneath(root_.get(), parent, true));
      cached_key_ = key;
    }
    return cached_.get();
  }

  absl::Status ApplyMeta(int dirfd, const std::string& name, const NodeMeta& m,
                         absl::string_view display, bool symlink) {
    if (opts_.same_owner) {
      RETURN_IF_ERROR(SetNodeOwner(dirfd, name, m.uid, m.gid, display));
    }
    RETURN_IF_ERROR(SetNodeXattrs(dirfd, name, m.xattrs, display));
    if (!symlink) RETURN_IF_ERROR(SetNodeMode(dirfd, name, m.mode, display));
    return SetNodeTimes(dirfd, name, m.mtime_sec, m.mtime_nsec, display);
  }

  absl::Status Entry(const TarHeader& h) {
    ASSIGN_OR_RETURN(const std::string name, NormalizeTarPath(h.name));
    ASSIGN_OR_RETURN(std::vector<std::string> comps, SplitRelativePath(name));
    const std::string path = absl::StrJoin(comps, "/");
    if (comps.empty()) {
      if (h.type != TarType::kDir) {
        return absl::InvalidArgumentError(
            "names the layer root but is not a directory");
      }
      dirs_[""] = MetaOf(h);
      out_.explicit_dirs.insert("");
      if (HasOpaqueXattr(dirs_[""])) out_.opaque_dirs.push_back("");
      return absl::OkStatus();
    }
    const std::string& base = comps.back();
    if (opts_.skip_lazy_metadata && comps.size() == 1 &&
        h.type == TarType::kReg &&
        (base == kTocTarName || base == kPrefetchLandmark ||
         base == kNoPrefetchLandmark)) {
      return absl::OkStatus();  // Next() skips its payload
    }
    if (absl::StartsWith(base, kWhiteoutPrefix)) {
      // The directory holding a whiteout exists in this layer.
      RETURN_IF_ERROR(Parent(comps).status());
      std::vector<std::string> parent(comps.begin(), comps.end() - 1);
      const std::string target = base.substr(kWhiteoutPrefix.size());
      if (base == kOpaqueMarker) {
        out_.opaque_dirs.push_back(absl::StrJoin(parent, "/"));
      } else if (!absl::StartsWith(base, kAufsMetaPrefix) && !target.empty() &&
                 target != "." && target != "..") {
        // (".wh.", ".wh..", ".wh..." name nothing a whiteout could hide:
        // ignored, as the lazy mount does.)
        parent.push_back(target);
        out_.whiteouts.push_back(absl::StrJoin(parent, "/"));
      }
      return absl::OkStatus();
    }
    // A later entry at (or under) a path linked to a lower layer's file
    // replaces that link too (it was made after merging, over this entry).
    std::erase_if(out_.lower_hardlinks, [&](const auto& link) {
      return link.first == path || absl::StartsWith(path, link.first + "/");
    });
    ASSIGN_OR_RETURN(int pfd, Parent(comps));
    struct stat st;
    if (fstatat(pfd, base.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      // A later entry replaces an earlier one; two directories merge.
      if (!(h.type == TarType::kDir && S_ISDIR(st.st_mode))) {
        RETURN_IF_ERROR(RemoveTreeAt(pfd, base, path));
        if (S_ISDIR(st.st_mode)) {
          // The cached parent may have been inside what was removed.
          cached_ = ScopedFd();
          ASSIGN_OR_RETURN(pfd, Parent(comps));
        }
      }
    }
    const NodeMeta meta = MetaOf(h);
    int rc = 0;
    switch (h.type) {
      case TarType::kDir:
        if (mkdirat(pfd, base.c_str(), 0700) != 0 && errno != EEXIST) {
          return ErrnoToStatus(errno, absl::StrCat("mkdir \"", path, "\""));
        }
        dirs_[path] = meta;
        out_.explicit_dirs.insert(path);
        // (As a `.wh..wh..opq` inside it: toc.h, IsOverlayPrivateXattr.)
        if (HasOpaqueXattr(meta)) out_.opaque_dirs.push_back(path);
        return absl::OkStatus();
      case TarType::kReg: {
        ScopedFd fd(openat(pfd, base.c_str(),
                           O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                           0600));
        if (!fd.valid()) {
          return ErrnoToStatus(errno, absl::StrCat("create \"", path, "\""));
        }
        uint64_t off = 0;
        while (true) {
          ASSIGN_OR_RETURN(absl::string_view data, tar_->ReadData(1 << 20));
          if (data.empty()) break;
          if (int err = WriteAllAt(fd.get(), data.data(), data.size(), off)) {
            return ErrnoToStatus(err, absl::StrCat("write \"", path, "\""));
          }
          off += data.size();
        }
        out_.file_bytes += off;
        break;
      }
      case TarType::kSymlink:
        RETURN_IF_ERROR(CheckSymlinkTarget(h.link_name));
        rc = symlinkat(h.link_name.c_str(), pfd, base.c_str());
        break;
      case TarType::kHardlink:
        return Hardlink(h, comps, pfd);
      case TarType::kChar:
        rc = mknodat(pfd, base.c_str(), S_IFCHR | 0600,
                     makedev(h.dev_major, h.dev_minor));
        break;
      case TarType::kBlock:
        rc = mknodat(pfd, base.c_str(), S_IFBLK | 0600,
                     makedev(h.dev_major, h.dev_minor));
        break;
      case TarType::kFifo:
        rc = mkfifoat(pfd, base.c_str(), 0600);
        break;
    }
    if (rc != 0)
      return ErrnoToStatus(errno, absl::StrCat("create \"", path, "\""));
    return ApplyMeta(pfd, base, meta, path, h.type == TarType::kSymlink);
  }

  absl::Status Hardlink(const TarHeader& h,
                        const std::vector<std::string>& comps, int pfd) {
    const std::string path = absl::StrJoin(comps, "/");
    absl::StatusOr<std::string> norm = NormalizeTarPath(h.link_name);
    absl::StatusOr<std::vector<std::string>> target =
        norm.ok() ? SplitRelativePath(*norm)
                  : absl::StatusOr<std::vector<std::string>>(norm.status());
    if (!target.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("hardlink target: ", target.status().message()));
    }
    if (target->empty()) {
      return absl::InvalidArgumentError("hardlink to the layer root");
    }
    const std::string tpath = absl::StrJoin(*target, "/");
    std::vector<std::string> tparent(target->begin(), target->end() - 1);
    absl::StatusOr<ScopedFd> tfd = OpenDirBeneath(root_.get(), tparent, false);
    struct stat st;
    if (!tfd.ok() || fstatat(tfd->get(), target->back().c_str(), &st,
                             AT_SYMLINK_NOFOLLOW) != 0) {
      if (tfd.ok() && errno != ENOENT) {
        return ErrnoToStatus(errno, absl::StrCat("stat \"", tpath, "\""));
      }
      if (!tfd.ok() && !absl::IsNotFound(tfd.status())) return tfd.status();
      // Not in this layer: a file of a lower layer, linked after merging.
      out_.lower_hardlinks.emplace_back(path, tpath);
      return absl::OkStatus();
    }
    if (S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("hardlink to directory \"", tpath, "\""));
    }
    if (linkat(tfd->get(), target->back().c_str(), pfd, comps.back().c_str(),
               0) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("hardlink to \"", tpath, "\""));
    }
    return absl::OkStatus();
  }

  absl::Status FinishDirs() {
    cached_ = ScopedFd();
    std::vector<std::pair<std::vector<std::string>, const NodeMeta*>> order;
    for (const auto& [path, meta] : dirs_) {
      ASSIGN_OR_RETURN(std::vector<std::string> comps, SplitRelativePath(path));
      order.emplace_back(std::move(comps), &meta);
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) {
                       return a.first.size() > b.first.size();
                     });
    for (const auto& [comps, meta] : order) {
      const std::string path = absl::StrJoin(comps, "/");
      if (comps.empty()) {
        RETURN_IF_ERROR(ApplyMeta(root_.get(), "", *meta, ".", false));
        continue;
      }
      std::vector<std::string> parent(comps.begin(), comps.end() - 1);
      absl::StatusOr<ScopedFd> pfd = OpenDirBeneath(root_.get(), parent, false);
      if (!pfd.ok()) continue;  // replaced by a later entry
      struct stat st;
      if (fstatat(pfd->get(), comps.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) !=
              0 ||
          !S_ISDIR(st.st_mode)) {
        continue;  // replaced by a later non-directory
      }
      RETURN_IF_ERROR(ApplyMeta(pfd->get(), comps.back(), *meta, path, false));
    }
    return absl::OkStatus();
  }

  TarReader* tar_;
  const TarUnpackOptions opts_;
  ScopedFd root_;
  ScopedFd cached_;  // the last parent directory opened
  std::string cached_key_;
  std::map<std::string, NodeMeta> dirs_;
  UnpackedLayer out_;
};

}  // namespace

absl::StatusOr<UnpackedLayer> UnpackTar(TarReader* tar, const std::string& dir,
                                        const TarUnpackOptions& options) {
  return Unpacker(tar, options).Run(dir);
}

}  // namespace lazypull
