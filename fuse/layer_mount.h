// Mounting served layers and stacking them into a root filesystem.
//
// ServedLayer: a LayerFs over a CachedLayer, mounted at a directory and
// served by a FuseServer on a thread of its own (no libfuse signal handlers:
// the process owning several mounts ends them itself). Stop() (or the
// destructor) unmounts — lazily when the mount is busy — and joins the
// thread.
//
// MountLayerStack: the layer directories, bottom first, assembled at a
// mountpoint as containerd's overlay snapshotter does: with no upper dir a
// read-only overlayfs (a read-only bind mount for a single layer, which
// overlayfs refuses without an upper); with an upper and a work dir a
// writable overlayfs whose changes land in the upper dir.
//
// Thread-safety: a ServedLayer is started and stopped by one thread; its
// LayerFs callbacks run on the server's worker threads.
#ifndef LAZYPULL_FUSE_LAYER_MOUNT_H_
#define LAZYPULL_FUSE_LAYER_MOUNT_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/cached_layer.h"
#include "fuse/fuse_server.h"
#include "fuse/layer_fs.h"

namespace lazypull {

class ServedLayer {
 public:
  // Mounts `layer` at `dir` (an existing directory) and starts serving it.
  static absl::StatusOr<std::unique_ptr<ServedLayer>> Start(
      const std::string& dir, std::shared_ptr<CachedLayer> layer,
      const LayerFsOptions& fs_options, FuseServerOptions server_options);
  ~ServedLayer();
  ServedLayer(const ServedLayer&) = delete;
  ServedLayer& operator=(const ServedLayer&) = delete;

  // Unmounts (detaching lazily if busy) and waits for the server to end.
  // Idempotent.
  void Stop();

  const std::string& dir() const { return dir_; }
  CachedLayer& layer() { return *layer_; }
  const LayerFs& fs() const { return *fs_; }
  // Shows `message` in the layer's state file ("error").
  void ReportError(const std::string& message) { fs_->RecordError(message); }
  // Every chunk is cached and verified (LayerFs::MarkComplete).
  void MarkComplete() { fs_->MarkComplete(); }
  // The mount's fusectl connection number (-1 if unknown).
  long connection_id() const { return server_->connection_id(); }
  // Stops page pushes (e.g. when no watchdog guards them).
  void StopPushing() { fs_->StopPushing(); }

 private:
  ServedLayer() = default;
  std::string dir_;
  std::shared_ptr<CachedLayer> layer_;
  std::unique_ptr<LayerFs> fs_;
  std::unique_ptr<FuseServer> server_;
  std::thread thread_;
};

// Mounts `lowers` (bottom first, at least one) at `mountpoint`; layers below
// one whose root is opaque (trusted.overlay.opaque, which overlayfs ignores
// on a lower root) are left out. With
// `upper` and `work` empty: read-only (see above); otherwise a writable
// overlay. Undo with umount2(mountpoint). Any path may hold ',' and ':'
// (escaped for overlayfs). Options longer than the page mount(2) takes (a
// hundred layers or so of long paths) are given relative to the directory
// the paths share, from a thread of its own working directory, and that
// directory is the mount's source (absolute paths then; InvalidArgument if
// even that is too long). Thread-safe: the caller's working directory never
// changes.
absl::Status MountLayerStack(const std::vector<std::string>& lowers,
                             const std::string& mountpoint,
                             const std::string& upper = "",
                             const std::string& work = "");

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_LAYER_MOUNT_H_
