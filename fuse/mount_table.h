// The mount table, read from /proc/self/mountinfo: which mounts exist, where
// and of what, without touching any of them (a stat or realpath of a
// mountpoint calls into its filesystem, and hangs with a stopped FUSE server
// behind it, even through an overlay).
//
// Thread-safety: pure functions of the table at the time of the call.
#ifndef LAZYPULL_FUSE_MOUNT_TABLE_H_
#define LAZYPULL_FUSE_MOUNT_TABLE_H_

#include <optional>
#include <string>
#include <vector>

namespace lazypull {

struct MountEntry {
  int id = 0;                     // the mount's id (unique while it exists)
  unsigned major = 0, minor = 0;  // st_dev of its filesystem
  std::string root;               // the path within that filesystem
  std::string mount_point;        // absolute, unescaped
  std::string fstype;             // e.g. "fuse.lazypull", "overlay"
  std::string source;
  std::string super_options;  // e.g. an overlay's lowerdir=...
};

// Every mount of this process's namespace, in mount order (a mount stacked
// on another at the same point comes later).
std::vector<MountEntry> ReadMountTable();

// The topmost mount at exactly `path` (absolute, no trailing slash), if any.
std::optional<MountEntry> TopMountAt(const std::string& path);

// fusectl's abort file of FUSE connection `id` (its mount's device minor).
std::string FuseAbortPath(long id);
// Opens it for writing (O_CLOEXEC), mounting fusectl at
// /sys/fs/fuse/connections first if it is not there and this process is
// root; -1 (errno set) if it cannot. A descriptor opened while the
// connection exists never reaches another: once a mount is gone its number
// may be a newer mount's, and a path opened then would abort that one.
int OpenFuseAbortFile(long id);

// An absolute form of `path` that resolves symlinks in its parent but not
// its last component, so that nothing mounted at `path` is touched (realpath
// of the whole path would stat the mount's root).
std::string PathWithoutTouchingIt(const std::string& path);

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_MOUNT_TABLE_H_
