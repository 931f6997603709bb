// Lower layers as overlayfs merges them: finding a path in a stack of layer
// directories (each a mounted or extracted layer in overlayfs's format:
// whiteouts are 0/0 character devices, opaque directories carry
// trusted.overlay.opaque=y, or user.overlay.opaque=y for a rootless
// overlayfs), for what a layer above needs to know of the ones below it
// (an implied directory's attributes, whether a whiteout hides anything, a
// hardlink's target in a layer pulled in full).
//
// Paths are walked a component at a time without following symlinks: a
// lower layer's symlink must not lead a lookup out of the image ("a -> /"
// then "a/etc/shadow").
//
// Thread-safety: free functions over the filesystem, safe from any thread.
#ifndef LAZYPULL_CORE_LOWER_LAYERS_H_
#define LAZYPULL_CORE_LOWER_LAYERS_H_

#include <sys/stat.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/node_writer.h"

namespace lazypull {

// An entry of the merged lower layers: the directory holding it in the
// topmost layer dir that has it, its name there, and its lstat.
struct LowerEntry {
  ScopedFd parent;
  std::string name;
  struct stat st;
};

// Whether a directory on `dirs` (a path's directory components, from the
// layer's root `root`) is opaque in that layer: overlayfs shows nothing of
// the layers below it under that directory.
bool OpaqueOnPath(int root, const std::vector<std::string>& dirs);

// Finds `path` (relative, '/'-separated; "" = the root) in the topmost of
// `lowers` (layer dirs, bottom first) holding it. NotFound if no layer has
// it, the topmost one that names it holds a whiteout, or a layer above the
// ones that have it has an opaque directory on its way (as overlayfs
// merges); a file, symlink or whiteout on its way hides it too.
absl::StatusOr<LowerEntry> FindInLowers(const std::vector<std::string>& lowers,
                                        const std::string& path);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LOWER_LAYERS_H_
