#include "core/node_writer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"

namespace lazypull {
namespace {

absl::Status Fail(int err, absl::string_view op, absl::string_view display) {
  return ErrnoToStatus(err, absl::StrCat(op, " \"", display, "\""));
}

}  // namespace

absl::Status SetNodeOwner(int dirfd, const std::string& name, uint64_t uid,
                          uint64_t gid, absl::string_view display) {
  // (Refused, as the converter refuses them: a uid past 32 bits was cut to
  // its low bits - 2^32+1000 became 1000, setuid and all - and 2^32-1 means
  // "leave it" to chown, leaving root's.)
  if (uid >= UINT32_MAX || gid >= UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("owner of \"", display,
                                                   "\": uid ", uid, " / gid ",
                                                   gid, ", beyond 32 bits"));
  }
  const char* nm = name.empty() ? "." : name.c_str();
  const int flags = name.empty() ? 0 : AT_SYMLINK_NOFOLLOW;
  if (fchownat(dirfd, nm, static_cast<uid_t>(uid), static_cast<gid_t>(gid),
               flags) != 0) {
    return Fail(errno, "chown", display);
  }
  return absl::OkStatus();
}

absl::Status SetNodeXattrs(
    int dirfd, const std::string& name,
    absl::Span<const std::pair<std::string, std::string>> xattrs,
    absl::string_view display) {
  if (xattrs.empty()) return absl::OkStatus();
  std::string proc = absl::StrCat("/proc/self/fd/", dirfd, "/", name);
  for (const auto& [k, v] : xattrs) {
    if (lsetxattr(proc.c_str(), k.c_str(), v.data(), v.size(), 0) != 0) {
      return Fail(errno, absl::StrCat("setxattr ", k, " on"), display);
    }
  }
  return absl::OkStatus();
}

absl::Status SetNodeMode(int dirfd, const std::string& name, uint32_t mode,
                         absl::string_view display) {
  // Through an O_PATH descriptor of the node itself: fchmodat follows a
  // symlink, and one swapped in for the node (by whoever may write to the
  // directory) would take the mode to its target, outside the tree.
  const char* nm = name.empty() ? "." : name.c_str();
  ScopedFd fd(openat(dirfd, nm, O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.valid()) return Fail(errno, "chmod", display);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return Fail(errno, "chmod", display);
  if (S_ISLNK(st.st_mode)) return absl::OkStatus();  // (modes of links: none)
  if (chmod(absl::StrCat("/proc/self/fd/", fd.get()).c_str(), mode & 07777) !=
      0) {
    return Fail(errno, "chmod", display);
  }
  return absl::OkStatus();
}

absl::Status SetNodeTimes(int dirfd, const std::string& name, int64_t sec,
                          uint32_t nsec, absl::string_view display) {
  const char* nm = name.empty() ? "." : name.c_str();
  const int flags = name.empty() ? 0 : AT_SYMLINK_NOFOLLOW;
  struct timespec ts[2];
  ts[0].tv_sec = ts[1].tv_sec = sec;
  ts[0].tv_nsec = ts[1].tv_nsec = nsec;
  if (utimensat(dirfd, nm, ts, flags) != 0) {
    return Fail(errno, "set times on", display);
  }
  return absl::OkStatus();
}

int WriteAllAt(int fd, const char* data, size_t len, uint64_t offset) {
  size_t done = 0;
  while (done < len) {
    ssize_t w =
        pwrite(fd, data + done, len - done, static_cast<off_t>(offset + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<size_t>(w);
  }
  return 0;
}

absl::StatusOr<std::vector<std::string>> SplitRelativePath(
    absl::string_view path) {
  std::vector<std::string> out;
  while (!path.empty() && path.front() == '/') path.remove_prefix(1);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (path.empty()) return out;
  for (absl::string_view c : absl::StrSplit(path, '/')) {
    if (c == ".") continue;
    if (c == "..") {
      return absl::InvalidArgumentError(absl::StrCat(
          "path \"", path, "\" has a \"..\" component (it could climb out)"));
    }
    if (c.empty()) continue;  // "a//b" as tar writers sometimes produce
    out.emplace_back(c);
  }
  return out;
}

absl::StatusOr<ScopedFd> OpenDirBeneath(int root,
                                        const std::vector<std::string>& comps,
                                        bool create,
                                        std::vector<size_t>* created) {
  ScopedFd cur(dup(root));
  if (!cur.valid()) return ErrnoToStatus(errno, "dup");
  for (size_t i = 0; i < comps.size(); ++i) {
    int fd = openat(cur.get(), comps[i].c_str(),
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
      if (mkdirat(cur.get(), comps[i].c_str(), 0755) != 0 && errno != EEXIST) {
        return ErrnoToStatus(
            errno, absl::StrCat(
                       "mkdir \"",
                       absl::StrJoin(comps.begin(), comps.begin() + i + 1, "/"),
                       "\""));
      }
      if (created != nullptr) created->push_back(i + 1);
      fd = openat(cur.get(), comps[i].c_str(),
                  O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) {
      int e = errno;
      std::string p = absl::StrJoin(comps.begin(), comps.begin() + i + 1, "/");
      if (e == ELOOP || e == ENOTDIR) {
        return absl::FailedPreconditionError(absl::StrCat(
            "\"", p,
            "\" is a symlink or not a directory: refusing to write "
            "through it"));
      }
      return ErrnoToStatus(e, absl::StrCat("open directory \"", p, "\""));
    }
    cur = ScopedFd(fd);
  }
  return cur;
}

absl::Status RemoveTreeAt(int parent, const std::string& name,
                          absl::string_view display) {
  struct stat st;
  if (fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return Fail(errno, "stat", display);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(parent, name.c_str(), 0) != 0 && errno != ENOENT) {
      return Fail(errno, "remove", display);
    }
    return absl::OkStatus();
  }
  // A directory of ours without owner rwx (a layer's 0555 /proc) is opened
  // up first: a user without CAP_DAC_OVERRIDE could not list or empty it.
  if (st.st_uid == geteuid() && (st.st_mode & 0700) != 0700 &&
      fchmodat(parent, name.c_str(), (st.st_mode & 07777) | 0700,
               AT_SYMLINK_NOFOLLOW) != 0) {
    return Fail(errno, "chmod u+rwx", display);
  }
  int fd = openat(parent, name.c_str(),
                  O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return Fail(errno, "open directory", display);
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    int e = errno;
    close(fd);
    return Fail(e, "read directory", display);
  }
  std::vector<std::string> names;
  while (struct dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      names.emplace_back(e->d_name);
    }
  }
  absl::Status st2;
  for (const std::string& n : names) {
    st2 = RemoveTreeAt(dirfd(d), n, absl::StrCat(display, "/", n));
    if (!st2.ok()) break;
  }
  closedir(d);
  if (!st2.ok()) return st2;
  if (unlinkat(parent, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return Fail(errno, "remove directory", display);
  }
  return absl::OkStatus();
}

}  // namespace lazypull
