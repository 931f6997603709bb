#include "core/lower_layers.h"

#include <fcntl.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lazypull {

bool OpaqueOnPath(int root, const std::vector<std::string>& dirs) {
  int cur = root;
  ScopedFd held;
  for (const std::string& d : dirs) {
    ScopedFd next(openat(cur, d.c_str(),
                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next.valid()) return false;
    for (const char* name : {"trusted.overlay.opaque", "user.overlay.opaque"}) {
      char v = 0;
      if (fgetxattr(next.get(), name, &v, 1) == 1 && v == 'y') return true;
    }
    held = std::move(next);
    cur = held.get();
  }
  return false;
}

absl::StatusOr<LowerEntry> FindInLowers(const std::vector<std::string>& lowers,
                                        const std::string& path) {
  std::vector<std::string> parts;
  if (!path.empty()) parts = absl::StrSplit(path, '/');
  std::string name = ".";
  if (!parts.empty()) {
    name = parts.back();
    parts.pop_back();
  }
  for (auto it = lowers.rbegin(); it != lowers.rend(); ++it) {
    ScopedFd root(
        open(it->c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!root.valid()) continue;
    absl::StatusOr<ScopedFd> parent =
        OpenDirBeneath(root.get(), parts, /*create=*/false);
    // Absent there: look lower, unless an opaque directory of this layer on
    // the way hides the layers below. A file, symlink or whiteout on the
    // way hides them too.
    if (absl::IsNotFound(parent.status())) {
      if (OpaqueOnPath(root.get(), parts)) break;
      continue;
    }
    if (!parent.ok()) break;
    LowerEntry e;
    if (fstatat(parent->get(), name.c_str(), &e.st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT || OpaqueOnPath(root.get(), parts)) break;
      continue;
    }
    if (S_ISCHR(e.st.st_mode) && e.st.st_rdev == makedev(0, 0)) break;
    e.parent = std::move(*parent);
    e.name = name;
    return e;
  }
  return absl::NotFoundError(
      absl::StrCat(path.empty() ? "/" : path, ": in no lower layer"));
}

}  // namespace lazypull
