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
// How: the helper is this binary run as `lazypull __fuse-watchdog PID ID...`
// (posix_spawn; not waited for: it starts in parallel with serving, and
// needs none of the server's memory, which a forked child would pin) in a
// session of its own (terminal and process-group signals do not reach it).
// It closes every descriptor but stdin/stdout/stderr, sets PR_SET_PDEATHSIG
// (the kernel signals it when the thread that started it dies, so Start()
// must be called from a thread that lives as long as the mounts: the main
// thread), and opens each connection's fusectl `abort` file (a connection
// removed later leaves that descriptor pointing at nothing, so a write
// never reaches a newer mount given the same number). It then waits until
// the server's main thread is dead: the process gone, or its main thread a
// zombie that a stuck thread keeps from being reaped; checked after the
// death signal is set (a server killed while the helper started is found
// that way), on any SIGUSR1, and every second (the death signal may come a
// moment before the kernel marks the thread dead). Then it writes `1` to
// each abort file, logs a line to its stderr (the server's log) naming the
// connections it aborted, and exits. A clean unmount stops it first
// (Stop(), or the destructor), so it never aborts after one.
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

// The helper's main: argv = {"__fuse-watchdog", PARENT_PID, ID...}.
int ConnectionWatchdogMain(int argc, char** argv);

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_CONNECTION_WATCHDOG_H_
