#include "fetch/rootfs_builder.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"
#include "core/node_writer.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

absl::StatusOr<std::vector<std::string>> ListDir(int fd,
                                                 absl::string_view display) {
  int dupfd = dup(fd);
  if (dupfd < 0) return ErrnoToStatus(errno, "dup");
  DIR* d = fdopendir(dupfd);
  if (d == nullptr) {
    int e = errno;
    close(dupfd);
    return ErrnoToStatus(e, absl::StrCat("read directory \"", display, "\""));
  }
  rewinddir(d);
  std::vector<std::string> names;
  while (struct dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
  }
  closedir(d);
  return names;
}

std::vector<std::string> XattrNames(int fd) {
  std::vector<std::string> out;
  ssize_t n = flistxattr(fd, nullptr, 0);
  if (n <= 0) return out;
  std::string buf(static_cast<size_t>(n), '\0');
  n = flistxattr(fd, buf.data(), buf.size());
  if (n <= 0) return out;
  buf.resize(static_cast<size_t>(n));
  for (absl::string_view name : absl::StrSplit(buf, '\0', absl::SkipEmpty())) {
    out.emplace_back(name);
  }
  return out;
}

class LayerApplier {
 public:
  LayerApplier(const UnpackedLayer& layer, const ApplyLayerOptions& o)
      : layer_(layer), opts_(o) {}

  absl::Status Run(const std::string& staged, const std::string& rootfs) {
    ScopedFd sfd(
        open(staged.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sfd.valid())
      return ErrnoToStatus(errno, absl::StrCat("open ", staged));
    root_ = ScopedFd(
        open(rootfs.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!root_.valid())
      return ErrnoToStatus(errno, absl::StrCat("open ", rootfs));

    for (const std::string& d : layer_.opaque_dirs) {
      RETURN_IF_ERROR(ClearDir(d));
    }
    for (const std::string& w : layer_.whiteouts) {
      RETURN_IF_ERROR(Delete(w));
    }
    struct stat staged_root;
    if (fstat(sfd.get(), &staged_root) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("stat ", staged));
    }
    RETURN_IF_ERROR(Merge(sfd.get(), root_.get(), ""));
    if (layer_.explicit_dirs.count("")) {
      RETURN_IF_ERROR(CopyDirAttrs(sfd.get(), root_.get(), ".", staged_root));
    }
    for (const auto& [path, target] : layer_.lower_hardlinks) {
      RETURN_IF_ERROR(LinkToLower(path, target));
    }
    return RestoreTimes();
  }

 private:
  // Remembers the times of root directory `path` (open as `fd`) before this
  // layer changes its entries: adding or removing a child bumps a
  // directory's mtime, and the merged tree must show the mtime of the
  // topmost layer that declares the directory (or the lower one's).
  void SaveTimes(int fd, const std::string& path) {
    if (saved_times_.count(path)) return;
    struct stat st;
    if (fstat(fd, &st) == 0) saved_times_[path] = {st.st_atim, st.st_mtim};
  }

  // Puts back the saved times of directories this layer does not declare
  // (those it declares got theirs from CopyDirAttrs), deepest first.
  absl::Status RestoreTimes() {
    std::vector<std::string> paths;
    for (const auto& [path, ts] : saved_times_) paths.push_back(path);
    std::sort(paths.begin(), paths.end(),
              [](const std::string& a, const std::string& b) {
                return std::count(a.begin(), a.end(), '/') + !a.empty() >
                       std::count(b.begin(), b.end(), '/') + !b.empty();
              });
    for (const std::string& path : paths) {
      if (layer_.explicit_dirs.count(path)) continue;
      ASSIGN_OR_RETURN(std::vector<std::string> comps, SplitRelativePath(path));
      absl::StatusOr<ScopedFd> fd = OpenDirBeneath(root_.get(), comps, false);
      if (!fd.ok()) continue;  // removed since
      const auto& ts = saved_times_[path];
      struct timespec t[2] = {ts.first, ts.second};
      if (futimens(fd->get(), t) != 0) {
        return ErrnoToStatus(errno,
                             absl::StrCat("set times on \"", path, "\""));
      }
    }
    return absl::OkStatus();
  }

  absl::Status ClearDir(const std::string& path) {
    ASSIGN_OR_RETURN(std::vector<std::string> comps, SplitRelativePath(path));
    absl::StatusOr<ScopedFd> fd = OpenDirBeneath(root_.get(), comps, false);
    if (!fd.ok()) return absl::OkStatus();  // nothing below to hide
    SaveTimes(fd->get(), path);
    ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(fd->get(), path));
    for (const std::string& n : names) {
      RETURN_IF_ERROR(RemoveTreeAt(
          fd->get(), n, path.empty() ? n : absl::StrCat(path, "/", n)));
    }
    return absl::OkStatus();
  }

  absl::Status Delete(const std::string& path) {
    ASSIGN_OR_RETURN(std::vector<std::string> comps, SplitRelativePath(path));
    if (comps.empty()) return absl::OkStatus();
    std::vector<std::string> parent(comps.begin(), comps.end() - 1);
    absl::StatusOr<ScopedFd> fd = OpenDirBeneath(root_.get(), parent, false);
    if (!fd.ok()) return absl::OkStatus();  // not in the lower layers
    SaveTimes(fd->get(), absl::StrJoin(parent, "/"));
    return RemoveTreeAt(fd->get(), comps.back(), path);
  }

  absl::Status Merge(int sfd, int rfd, const std::string& rel) {
    SaveTimes(rfd, rel);
    ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(sfd, rel));
    for (const std::string& n : names) {
      const std::string path = rel.empty() ? n : absl::StrCat(rel, "/", n);
      struct stat ss, rs;
      if (fstatat(sfd, n.c_str(), &ss, AT_SYMLINK_NOFOLLOW) != 0) {
        return ErrnoToStatus(errno, absl::StrCat("stat staged \"", path, "\""));
      }
      bool in_root = fstatat(rfd, n.c_str(), &rs, AT_SYMLINK_NOFOLLOW) == 0;
      if (in_root && S_ISDIR(ss.st_mode) && S_ISDIR(rs.st_mode)) {
        ScopedFd s(openat(sfd, n.c_str(),
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        ScopedFd r(openat(rfd, n.c_str(),
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!s.valid() || !r.valid()) {
          return ErrnoToStatus(errno,
                               absl::StrCat("open directory \"", path, "\""));
        }
        RETURN_IF_ERROR(Merge(s.get(), r.get(), path));
        if (layer_.explicit_dirs.count(path)) {
          RETURN_IF_ERROR(CopyDirAttrs(s.get(), r.get(), path, ss));
        }
        continue;
      }
      if (in_root) RETURN_IF_ERROR(RemoveTreeAt(rfd, n, path));
      // Moving a directory to another parent writes its "..": one without
      // owner write (a layer's 0555 /proc) is opened up for the move, for a
      // user without CAP_DAC_OVERRIDE, then given its mode back.
      const bool open_up = S_ISDIR(ss.st_mode) && (ss.st_mode & 0200) == 0 &&
                           ss.st_uid == geteuid() && geteuid() != 0;
      if (open_up && fchmodat(sfd, n.c_str(), (ss.st_mode & 07777) | 0200,
                              AT_SYMLINK_NOFOLLOW) != 0) {
        return ErrnoToStatus(errno, absl::StrCat("chmod u+w \"", path, "\""));
      }
      if (renameat(sfd, n.c_str(), rfd, n.c_str()) != 0) {
        return ErrnoToStatus(errno,
                             absl::StrCat("move \"", path, "\" into place"));
      }
      if (open_up && fchmodat(rfd, n.c_str(), ss.st_mode & 07777,
                              AT_SYMLINK_NOFOLLOW) != 0) {
        return ErrnoToStatus(errno, absl::StrCat("chmod \"", path, "\""));
      }
    }
    return absl::OkStatus();
  }

  // The upper directory's attributes replace the lower one's, as overlayfs
  // shows them.
  // `st` is the staged directory's stat taken before its children were
  // moved out (moving them changed its mtime).
  absl::Status CopyDirAttrs(int sfd, int rfd, const std::string& path,
                            const struct stat& st) {
    if (opts_.same_owner && fchown(rfd, st.st_uid, st.st_gid) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("chown \"", path, "\""));
    }
    std::vector<std::string> want = XattrNames(sfd);
    std::set<std::string> keep(want.begin(), want.end());
    for (const std::string& name : XattrNames(rfd)) {
      if (!keep.count(name) && fremovexattr(rfd, name.c_str()) != 0 &&
          errno != ENODATA) {
        return ErrnoToStatus(
            errno, absl::StrCat("removexattr ", name, " on \"", path, "\""));
      }
    }
    for (const std::string& name : want) {
      ssize_t n = fgetxattr(sfd, name.c_str(), nullptr, 0);
      if (n < 0) continue;
      std::string v(static_cast<size_t>(n), '\0');
      n = fgetxattr(sfd, name.c_str(), v.data(), v.size());
      if (n < 0) continue;
      v.resize(static_cast<size_t>(n));
      if (fsetxattr(rfd, name.c_str(), v.data(), v.size(), 0) != 0) {
        return ErrnoToStatus(
            errno, absl::StrCat("setxattr ", name, " on \"", path, "\""));
      }
    }
    if (fchmod(rfd, st.st_mode & 07777) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("chmod \"", path, "\""));
    }
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    if (futimens(rfd, ts) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("set times on \"", path, "\""));
    }
    return absl::OkStatus();
  }

  absl::Status LinkToLower(const std::string& path, const std::string& target) {
    ASSIGN_OR_RETURN(std::vector<std::string> pc, SplitRelativePath(path));
    ASSIGN_OR_RETURN(std::vector<std::string> tc, SplitRelativePath(target));
    std::vector<std::string> pparent(pc.begin(), pc.end() - 1);
    std::vector<std::string> tparent(tc.begin(), tc.end() - 1);
    absl::StatusOr<ScopedFd> tfd = OpenDirBeneath(root_.get(), tparent, false);
    struct stat st;
    if (!tfd.ok() ||
        fstatat(tfd->get(), tc.back().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("hardlink \"", path, "\" to \"", target,
                       "\": the target is a file of no layer up to this one"));
    }
    ASSIGN_OR_RETURN(ScopedFd pfd, OpenDirBeneath(root_.get(), pparent, true));
    SaveTimes(pfd.get(), absl::StrJoin(pparent, "/"));
    RETURN_IF_ERROR(RemoveTreeAt(pfd.get(), pc.back(), path));
    if (linkat(tfd->get(), tc.back().c_str(), pfd.get(), pc.back().c_str(),
               0) != 0) {
      return ErrnoToStatus(
          errno, absl::StrCat("hardlink \"", path, "\" to \"", target, "\""));
    }
    return absl::OkStatus();
  }

  const UnpackedLayer& layer_;
  const ApplyLayerOptions opts_;
  ScopedFd root_;
  std::map<std::string, std::pair<struct timespec, struct timespec>>
      saved_times_;
};

}  // namespace

absl::Status ApplyLayer(const std::string& staged, const UnpackedLayer& layer,
                        const std::string& rootfs,
                        const ApplyLayerOptions& options) {
  return LayerApplier(layer, options).Run(staged, rootfs);
}

}  // namespace lazypull
