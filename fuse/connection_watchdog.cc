#include "fuse/connection_watchdog.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/errno_status.h"
#include "core/log.h"

extern char** environ;

namespace lazypull {
namespace {

std::string AbortPath(long id) {
  return absl::StrCat("/sys/fs/fuse/connections/", id, "/abort");
}

}  // namespace

absl::StatusOr<std::unique_ptr<ConnectionWatchdog>> ConnectionWatchdog::Start(
    const std::vector<long>& ids) {
  std::vector<std::string> args = {"lazypull", "__fuse-watchdog",
                                   absl::StrCat(getpid())};
  for (long id : ids) {
    struct stat st;
    if (id < 0 || stat(AbortPath(id).c_str(), &st) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("no fusectl abort file for FUSE connection ", id,
                       " (is /sys/fs/fuse/connections mounted?)"));
    }
    args.push_back(absl::StrCat(id));
  }
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return ErrnoToStatus(errno, "readlink /proc/self/exe");
  exe[n] = '\0';
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
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, exe, nullptr, &attr, argv.data(), environ);
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

int ConnectionWatchdogMain(int argc, char** argv) {
  long parent = 0;
  if (argc < 3 || !absl::SimpleAtoi(argv[1], &parent)) {
    LogError("__fuse-watchdog: usage: __fuse-watchdog PARENT_PID ID...");
    return 2;
  }
  // Nothing of the server's but its log (stderr).
  close_range(3, ~0U, 0);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, nullptr);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) {
    signal(sig, SIG_IGN);
  }
  prctl(PR_SET_PDEATHSIG, SIGUSR1);
  // (The server may have died before the line above.)
  if (getppid() == static_cast<pid_t>(parent)) {
    int sig = 0;
    sigwait(&usr1, &sig);
  }
  std::vector<std::string> aborted;
  for (int i = 2; i < argc; ++i) {
    long id = 0;
    if (!absl::SimpleAtoi(argv[i], &id)) continue;
    const int fd = open(AbortPath(id).c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) continue;  // (unmounted meanwhile)
    if (write(fd, "1", 1) == 1) aborted.push_back(argv[i]);
    close(fd);
  }
  LogWarning("FUSE watchdog: server ", parent,
             " died without unmounting; aborted its connection(s) ",
             absl::StrJoin(aborted, ", "),
             " (its mounts answer ENOTCONN until unmounted)");
  return 0;
}

}  // namespace lazypull
