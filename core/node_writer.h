// Writing filesystem nodes beneath a directory fd without ever following a
// symlink: the pieces shared by the layer extractor (core/extractor.h), the
// streaming tar unpacker (core/tar_unpacker.h) and the pull's root-filesystem
// merge (fetch/rootfs_builder.h).
//
// Every function works relative to an open directory fd and a single name
// (no '/'); directories are walked one component at a time with
// O_NOFOLLOW | O_DIRECTORY, so a symlink planted in the tree makes the walk
// fail (ELOOP/ENOTDIR) instead of leading outside it. Attributes are set
// with the *at / l* calls that act on a symlink itself; xattrs go through
// /proc/self/fd/<dirfd>/<name> with lsetxattr for the same reason.
//
// Errors are errno statuses whose message is "<op> \"<display>\"" (the
// caller's name for the node), e.g. `chown "usr/bin/x": Operation not
// permitted (errno 1)`.
//
// Thread-safety: free functions, safe from any thread; a ScopedFd is owned
// by one thread at a time.
#ifndef LAZYPULL_CORE_NODE_WRITER_H_
#define LAZYPULL_CORE_NODE_WRITER_H_

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace lazypull {

// An fd closed on scope exit. Non-copyable.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) close(fd_);
  }
  ScopedFd(ScopedFd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  ScopedFd& operator=(ScopedFd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_;
};

// lchown-equivalent (fchownat with AT_SYMLINK_NOFOLLOW; `name` "" means the
// directory `dirfd` itself).
absl::Status SetNodeOwner(int dirfd, const std::string& name, uint64_t uid,
                          uint64_t gid, absl::string_view display);
// Each xattr in order with lsetxattr. Error op: "setxattr <key> on".
absl::Status SetNodeXattrs(
    int dirfd, const std::string& name,
    absl::Span<const std::pair<std::string, std::string>> xattrs,
    absl::string_view display);
// chmod of the permission bits (07777). Not for symlinks.
absl::Status SetNodeMode(int dirfd, const std::string& name, uint32_t mode,
                         absl::string_view display);
// atime = mtime = the given time, symlinks not followed.
absl::Status SetNodeTimes(int dirfd, const std::string& name, int64_t sec,
                          uint32_t nsec, absl::string_view display);

// pwrite of all `len` bytes at `offset` (EINTR and short writes retried).
// Returns the errno of a failure, 0 on success.
int WriteAllAt(int fd, const char* data, size_t len, uint64_t offset);

// Splits a relative path into components after normalizing it: leading
// "/" and "./" and trailing "/" dropped, "." components dropped. Fails
// (InvalidArgument) on a ".." component or an empty component inside.
// "" and "." give no components (the root).
absl::StatusOr<std::vector<std::string>> SplitRelativePath(
    absl::string_view path);

// Opens the directory `components` beneath `root` one component at a time
// with O_NOFOLLOW. With `create`, missing components are made (mode 0755)
// and each one made is reported through `created` (its component count),
// when not null. A symlink or non-directory on the way fails with
// FailedPrecondition naming the path.
absl::StatusOr<ScopedFd> OpenDirBeneath(
    int root, const std::vector<std::string>& components, bool create,
    std::vector<size_t>* created = nullptr);

// Removes `name` in `dirfd`, recursively for a directory, never following
// symlinks. A missing name is not an error.
absl::Status RemoveTreeAt(int dirfd, const std::string& name,
                          absl::string_view display);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_NODE_WRITER_H_
