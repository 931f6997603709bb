// Applying unpacked layers, in order, onto one merged root filesystem: the
// last step of a conventional full pull (what containerd's overlay of
// snapshots presents, materialized in a plain directory).
//
// ApplyLayer(staged, layer, rootfs) takes a directory that UnpackTar
// (core/tar_unpacker.h) filled with one layer, and:
//  1. clears the rootfs contents of each of the layer's opaque directories
//     (`.wh..wh..opq`: the lower layers' entries there disappear);
//  2. deletes each whiteout's target (`.wh.X`: X, recursively, if present);
//  3. moves the layer's entries into the rootfs by rename(2) (no copying):
//     a name present in both is replaced, except directory over directory,
//     which merges recursively and then takes the upper directory's owner,
//     mode, xattrs and times when the layer had an entry for it (implicit
//     parents leave the lower attributes alone);
//  4. makes the hardlinks whose targets are in lower layers.
// Whiteouts only ever affect lower layers: the same layer's entries are
// staged apart, so their order inside the tar does not matter.
//
// Safety: both trees are walked through directory fds with O_NOFOLLOW
// (core/node_writer.h); a symlink in the rootfs is replaced or removed,
// never followed.
//
// Thread-safety: one ApplyLayer at a time per rootfs.
#ifndef LAZYPULL_FETCH_ROOTFS_BUILDER_H_
#define LAZYPULL_FETCH_ROOTFS_BUILDER_H_

#include <string>

#include "absl/status/status.h"
#include "core/tar_unpacker.h"

namespace lazypull {

struct ApplyLayerOptions {
  // Copy owners of merged directories (callers default it to "running as
  // root", as UnpackTar's same_owner).
  bool same_owner = true;
};

// Moves the staged layer into `rootfs` (both existing directories on one
// filesystem). `staged` is left holding only emptied directories; the caller
// removes it.
absl::Status ApplyLayer(const std::string& staged, const UnpackedLayer& layer,
                        const std::string& rootfs,
                        const ApplyLayerOptions& options = {});

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_ROOTFS_BUILDER_H_
