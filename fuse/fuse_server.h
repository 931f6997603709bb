// FuseServer: mounts a libfuse3 low-level filesystem and runs its
// multi-threaded loop until it is unmounted or the process is signalled.
//
// Mount options: read-only, default_permissions, fsname/subtype "lazypull",
// max_read 1 MiB (libfuse needs it as a mount option too), optionally
// allow_other. A mountpoint left behind by a killed server ("transport
// endpoint is not connected") is detached first, with a log line.
// SIGINT/SIGTERM/SIGHUP end the loop; Run() then unmounts cleanly (its own
// mount only: not one made at the same path after it was detached).
//
// Thread-safety: Mount and Run from one thread; the filesystem's callbacks
// run on the loop's worker threads.
#ifndef LAZYPULL_FUSE_FUSE_SERVER_H_
#define LAZYPULL_FUSE_FUSE_SERVER_H_

#include <fuse3/fuse_lowlevel.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lazypull {

struct FuseServerOptions {
  bool allow_other = false;
  unsigned max_threads = 16;
  // Install libfuse's SIGINT/SIGTERM/SIGHUP handlers (default true). libfuse
  // keeps one session for them: a process serving several mounts turns this
  // off and ends them itself (unmounting ends Run()).
  bool install_signal_handlers = true;
};

class FuseServer {
 public:
  static absl::StatusOr<std::unique_ptr<FuseServer>> Mount(
      const std::string& mountpoint, const fuse_lowlevel_ops& ops,
      void* userdata, const FuseServerOptions& options);
  ~FuseServer();
  FuseServer(const FuseServer&) = delete;
  FuseServer& operator=(const FuseServer&) = delete;

  // Serves requests until unmounted or signalled, then unmounts.
  // `before_unmount`, if given, runs once the loop has ended and before the
  // session's /dev/fuse descriptor is closed (a thread still writing
  // notifications to it must stop first: the number could be reused).
  absl::Status Run(const std::function<void()>& before_unmount = nullptr);

  // The session, for notifications to the kernel (fuse_lowlevel_notify_*)
  // from any thread while Run() serves.
  fuse_session* session() const { return se_; }

  // Aborts the kernel's side of the connection (fusectl's
  // /sys/fs/fuse/connections/N/abort, opened at mount: once the mount is
  // gone its number may be a newer mount's): every request still queued
  // fails, which frees a thread a notification has blocked on a page a
  // queued read holds, once the loop no longer reads them (after a signal).
  // Best effort: false if the connection is unknown, fusectl was not
  // mounted, or the write fails.
  bool AbortConnection() const;
  // The connection's fusectl number (the mount's device minor), or -1 if
  // it could not be found.
  long connection_id() const { return connection_; }

 private:
  FuseServer(fuse_session* se, FuseServerOptions options)
      : se_(se), options_(options) {}
  // fuse_session_unmount, if the newest mount at the mountpoint is still
  // this connection's.
  void Unmount();

  fuse_session* se_;
  std::string mountpoint_;
  // The connection's number (the mount's anonymous device minor), or -1.
  long connection_ = -1;
  int abort_fd_ = -1;  // its fusectl abort file
  FuseServerOptions options_;
  bool mounted_ = true;
};

// Detaches a dead FUSE mount at `mountpoint` (ENOTCONN), if there is one.
void DetachStaleMount(const std::string& mountpoint);

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_FUSE_SERVER_H_
