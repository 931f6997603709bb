// InProcessMount: a LayerFs mounted at a fresh temporary directory and served
// by a thread of the test's own process, for tests that drive the layer
// (fills, aborts) while the kernel uses the mount.
//
// Thread-safety: one test thread drives it; the serving thread is its own.
#ifndef LAZYPULL_TESTS_IN_PROCESS_MOUNT_H_
#define LAZYPULL_TESTS_IN_PROCESS_MOUNT_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/cached_layer.h"
#include "fuse/fuse_server.h"
#include "fuse/layer_fs.h"

namespace lazypull::testing {

class InProcessMount {
 public:
  // Mounts a LayerFs over `layer` with `options` (state_name and
  // state_digest filled in if empty), no signal handlers, pushes started;
  // the loop stops pushing before it unmounts (aborting the connection if a
  // push is stuck), as `lazypull mount` does.
  static absl::StatusOr<std::unique_ptr<InProcessMount>> Start(
      std::shared_ptr<CachedLayer> layer, LayerFsOptions options);
  // Detaches the mount if it is still there, and waits for the loop.
  ~InProcessMount();

  const std::string& dir() const { return dir_; }
  LayerFs& fs() { return *fs_; }
  FuseServer& server() { return *server_; }

  // Waits for the serving loop to end (an unmount or an abort ends it);
  // its result.
  absl::Status Join();
  // Whether the loop stopped the pushes before it unmounted.
  bool stopped_pushing() const { return stopped_pushing_.load(); }

 private:
  InProcessMount() = default;

  std::string dir_;
  std::unique_ptr<LayerFs> fs_;
  std::unique_ptr<FuseServer> server_;
  std::thread loop_;
  absl::Status served_;
  std::atomic<bool> stopped_pushing_{false};
};

}  // namespace lazypull::testing

#endif  // LAZYPULL_TESTS_IN_PROCESS_MOUNT_H_
