#include "fuse/fuse_server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/thread_priority.h"
#include "fuse/mount_table.h"

namespace lazypull {

void DetachStaleMount(const std::string& mountpoint) {
  // statfs, not stat: a FUSE mount answers stat from cached attributes even
  // after its server died, but always sends STATFS to the server.
  struct statfs sfs;
  // A dead server's connection answers ENOTCONN, or ECONNABORTED once it
  // was aborted through fusectl.
  if (statfs(mountpoint.c_str(), &sfs) == 0 ||
      (errno != ENOTCONN && errno != ECONNABORTED)) {
    return;
  }
  if (umount2(mountpoint.c_str(), MNT_DETACH) == 0) {
    LogWarning("mountpoint ", mountpoint,
               " held a dead FUSE mount (transport endpoint is not "
               "connected): detached it");
  } else {
    LogWarning("mountpoint ", mountpoint,
               " holds a dead FUSE mount and detaching it failed: errno ",
               errno);
  }
}

namespace {

// The minor device number of the newest mount at `mountpoint` (from the
// mount table, which does not touch the mount), or -1.
long MountDeviceMinor(const std::string& mountpoint) {
  char real[PATH_MAX];
  const std::string want =
      realpath(mountpoint.c_str(), real) != nullptr ? real : mountpoint;
  std::optional<MountEntry> e = TopMountAt(want);
  return e ? static_cast<long>(e->minor) : -1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FuseServer>> FuseServer::Mount(
    const std::string& mountpoint, const fuse_lowlevel_ops& ops, void* userdata,
    const FuseServerOptions& options) {
  DetachStaleMount(mountpoint);
  std::string opts =
      "ro,default_permissions,fsname=lazypull,subtype=lazypull,"
      "max_read=1048576";
  if (options.allow_other) opts += ",allow_other";
  // A layer is a container's root filesystem (directly, or under overlayfs,
  // which honours setuid and devices): a root mount keeps them (libfuse's
  // default is nosuid,nodev).
  if (geteuid() == 0) opts += ",suid,dev";
  std::vector<std::string> argv_s = {"lazypull", "-o", opts};
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  struct fuse_args args =
      FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  fuse_session* se = fuse_session_new(&args, &ops, sizeof(ops), userdata);
  if (se == nullptr) {
    return absl::InternalError("fuse_session_new failed (bad mount options?)");
  }
  if (fuse_session_mount(se, mountpoint.c_str()) != 0) {
    fuse_session_destroy(se);
    return absl::UnavailableError(absl::StrCat(
        "cannot mount FUSE at ", mountpoint,
        " (is /dev/fuse available, the mountpoint a directory, and are you "
        "root or is fusermount3 installed?)"));
  }
  if (options.install_signal_handlers && fuse_set_signal_handlers(se) != 0) {
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return absl::InternalError("cannot install signal handlers");
  }
  std::unique_ptr<FuseServer> server(new FuseServer(se, options));
  server->mountpoint_ = mountpoint;
  server->connection_ = MountDeviceMinor(mountpoint);
  if (server->connection_ >= 0) {
    server->abort_fd_ = OpenFuseAbortFile(server->connection_);
  }
  return server;
}

bool FuseServer::AbortConnection() const {
  return abort_fd_ >= 0 && write(abort_fd_, "1", 1) == 1;
}

FuseServer::~FuseServer() {
  if (abort_fd_ >= 0) close(abort_fd_);
  if (options_.install_signal_handlers) fuse_remove_signal_handlers(se_);
  if (mounted_) Unmount();
  fuse_session_destroy(se_);
}

void FuseServer::Unmount() {
  mounted_ = false;
  // libfuse unmounts by path: once this mount was detached (busy, `unmount
  // --force`) and another one made there, that would be the other one. It
  // is only done while the newest mount there is this connection's; else
  // closing the connection (fuse_session_destroy) ends this one.
  if (connection_ >= 0 && MountDeviceMinor(mountpoint_) != connection_) {
    LogInfo("the mount at ", mountpoint_,
            " is no longer this server's (detached); leaving it");
    return;
  }
  fuse_session_unmount(se_);
  // libfuse leaves the mount when its connection was aborted (fusectl):
  // a dead mount would stay there, answering ENOTCONN.
  if (connection_ >= 0 && MountDeviceMinor(mountpoint_) == connection_ &&
      umount2(mountpoint_.c_str(), MNT_DETACH) != 0) {
    LogWarning("unmount ", mountpoint_, ": ", strerror(errno));
  }
}

absl::Status FuseServer::Run(const std::function<void()>& before_unmount) {
  struct fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  fuse_loop_cfg_set_max_threads(cfg, options_.max_threads);
  // Keep every worker: a thread that exits when idle takes its per-thread
  // state (io_uring ring, decompressors) with it, and the next burst of reads
  // pays to create them again (measured: ~700 thread creations for 3,000
  // small files).
  fuse_loop_cfg_set_idle_threads(cfg, options_.max_threads);
  NameThisThread("lp-fuse");  // (and the workers it starts: they inherit it)
  int rc = fuse_session_loop_mt(se_, cfg);
  fuse_loop_cfg_destroy(cfg);
  if (before_unmount) before_unmount();
  Unmount();
  if (rc < 0) return ErrnoToStatus(-rc, "FUSE session loop");
  return absl::OkStatus();
}

}  // namespace lazypull
