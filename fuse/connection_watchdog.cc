#include "fuse/connection_watchdog.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/errno_status.h"
#include "core/log.h"
#include "core/process_stat.h"
#include "fuse/mount_table.h"

extern char** environ;

namespace lazypull {
absl::StatusOr<std::unique_ptr<ConnectionWatchdog>> ConnectionWatchdog::Start(
    const std::vector<long>& ids) {
  std::vector<std::string> args = {"lazypull", "__fuse-watchdog",
                                   absl::StrCat(getpid())};
  for (long id : ids) {
    struct stat st;
    if (id < 0 || stat(FuseAbortPath(id).c_str(), &st) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("no fusectl abort file for FUSE connection ", id,
                       " (is /sys/fs/fuse/connections mounted?)"));
    }
    args.push_back(absl::StrCat(id));
  }
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // Default signal dispositions and an empty mask (a server blocks its
  // termination signals to sigwait them), in a session of its own.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETSID);
  // (Not waited for: it starts in parallel with serving. A server killed
  // before the helper has set its death signal is found dead by the check
  // that follows it.)
  pid_t pid = -1;
  const int rc =
      posix_spawn(&pid, "/proc/self/exe", nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return ErrnoToStatus(rc, "starting the FUSE watchdog");
  return std::unique_ptr<ConnectionWatchdog>(new ConnectionWatchdog(pid));
}

void ConnectionWatchdog::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

namespace {

// Whether process `pid` is dead or dying: gone, or its main thread a
// zombie (another of its threads, such as a pusher stuck on a page lock,
// keeps the process from being reaped).
bool ServerDead(pid_t pid) {
  const std::vector<std::string> f = ProcessStatFields(pid);
  return f.empty() || f[0] == "Z" || f[0] == "X";
}

}  // namespace

int ConnectionWatchdogMain(int argc, char** argv) {
  long parent = 0;
  if (argc < 3 || !absl::SimpleAtoi(argv[1], &parent)) {
    LogError("__fuse-watchdog: usage: __fuse-watchdog PARENT_PID ID...");
    return 2;
  }
  // Nothing of the server's but its log (stderr): not its /dev/fuse
  // descriptors (holding them would keep its connections alive), not the
  // pipe `lazypull mount` waits on for the mount to be ready.
  if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
    struct rlimit rl;
    const rlim_t max =
        getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
            ? rl.rlim_cur
            : 65536;
    for (rlim_t fd = 3; fd < max; ++fd) close(static_cast<int>(fd));
  }
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, nullptr);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) {
    signal(sig, SIG_IGN);
  }
  prctl(PR_SET_PDEATHSIG, SIGUSR1);
  // The abort files, opened now: a connection removed later (its mount
  // unmounted) leaves these descriptors pointing at nothing, so a write can
  // never reach a newer mount that got the same number.
  std::vector<std::pair<std::string, int>> aborts;
  for (int i = 2; i < argc; ++i) {
    long id = 0;
    if (!absl::SimpleAtoi(argv[i], &id)) continue;
    aborts.emplace_back(argv[i], OpenFuseAbortFile(id));
  }
  const pid_t server = static_cast<pid_t>(parent);
  // The death signal comes when the server's main thread dies, possibly
  // just before the kernel marks it dead, and anyone may send a SIGUSR1:
  // the server's state decides, looked at again every second.
  const struct timespec second = {1, 0};
  while (getppid() == server && !ServerDead(server)) {
    siginfo_t info;
    sigtimedwait(&usr1, &info, &second);
  }
  std::vector<std::string> aborted;
  for (auto& [id, fd] : aborts) {
    if (fd >= 0 && write(fd, "1", 1) == 1) aborted.push_back(id);
    if (fd >= 0) close(fd);
  }
  LogWarning("FUSE watchdog: server ", parent,
             " died without unmounting; aborted connection(s) [",
             absl::StrJoin(aborted, ", "),
             "] (its mounts answer ENOTCONN until unmounted)");
  return 0;
}

}  // namespace lazypull
