// ConnectionWatchdog: a helper process that aborts this process's FUSE
// connections if this process dies without unmounting them (SIGKILL, a
// crash).
//
// Why: the kernel's FUSE_NOTIFY_STORE (LayerFs's page pushes) takes each
// page's lock uninterruptibly, and a page a reader's read has locked stays
// locked until the server answers that read. A server killed while its
// pusher waits on such a page can neither answer nor finish exiting: its
// /dev/fuse descriptors stay open, so the kernel never aborts the
// connection, and the reader and the push wait for each other for good.
// Writing the connection's fusectl `abort` fails the read, which frees the
// page, the push, and the dying process. This helper is the one left alive
// to write it.
//
// How: the helper is a child forked from this process (no exec: it starts
// in a millisecond and needs nothing loaded), named `lp-watchdog`, which
// right away closes every descriptor but stderr (the server's /dev/fuse ones
// first: holding them would keep the connections alive), leaves the
// server's session (terminal and process-group signals do not reach it) and
// sets PR_SET_PDEATHSIG: the kernel signals it when the thread that forked
// it dies, so Start() must be called from a thread that lives as long as
// the mounts (the main thread). It opens each connection's fusectl `abort`
// file at once (a connection removed later leaves that descriptor pointing
// at nothing, so a write never reaches a newer mount given the same
// number), tells Start() it is armed (Start waits for that: before it, a
// death could be missed), and waits. When the server's main thread is dead
// (the process gone, or its main thread a zombie that a stuck thread keeps
// from being reaped; any other SIGUSR1 is ignored) it writes `1` to each
// abort file, writes a line to stderr (the server's log) naming the
// connections it aborted, and exits. It makes async-signal-safe calls only
// (it is the child of a multi-threaded process). A clean unmount stops it
// first (Stop(), or the destructor), so it never aborts after one.
//
// Thread-safety: Start and Stop from the thread that lives as long as the
// mounts; one object per set of connections.
#ifndef LAZYPULL_FUSE_CONNECTION_WATCHDOG_H_
#define LAZYPULL_FUSE_CONNECTION_WATCHDOG_H_

#include <sys/types.h>

#include <memory>
#include <vector>

#include "absl/status/statusor.h"

namespace lazypull {

class ConnectionWatchdog {
 public:
  // Starts the helper for fusectl connection numbers `ids`
  // (FuseServer::connection_id()). FailedPrecondition if fusectl is not
  // mounted (nothing could be aborted) or an id is unknown; the errno's
  // status if the helper cannot be started.
  static absl::StatusOr<std::unique_ptr<ConnectionWatchdog>> Start(
      const std::vector<long>& ids);
  // Stops the helper (kills and reaps it): call before unmounting cleanly.
  void Stop();
  ~ConnectionWatchdog() { Stop(); }
  ConnectionWatchdog(const ConnectionWatchdog&) = delete;
  ConnectionWatchdog& operator=(const ConnectionWatchdog&) = delete;

  pid_t pid() const { return pid_; }

 private:
  explicit ConnectionWatchdog(pid_t pid) : pid_(pid) {}
  pid_t pid_;
};

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_CONNECTION_WATCHDOG_H_
