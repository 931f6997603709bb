#include "fuse/connection_watchdog.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/log.h"

namespace lazypull {
namespace {

std::string AbortPath(long id) {
  return absl::StrCat("/sys/fs/fuse/connections/", id, "/abort");
}

// Everything the helper needs, prepared before fork(): after it, the child
// of a multi-threaded process may only make async-signal-safe calls (no
// allocation, no locks), so it works from these fixed strings.
struct HelperPlan {
  pid_t server = 0;
  std::string stat_path;                  // /proc/SERVER/stat
  std::vector<std::string> abort_paths;   // one per connection
  std::vector<std::string> abort_labels;  // the connection numbers
  std::string log_head, log_tail;         // the line it writes at the end
};

void WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Whether the server's main thread is dead: /proc/PID/stat gone, or its
// state (after the last ')') Z or X (a zombie main thread that a stuck
// thread keeps from being reaped).
bool ServerDead(const HelperPlan& plan) {
  char buf[1024];
  const int fd = open(plan.stat_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  const ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return true;
  buf[n] = '\0';
  const char* paren = strrchr(buf, ')');
  if (paren == nullptr || paren[1] == '\0' || paren[2] == '\0') return true;
  return paren[2] == 'Z' || paren[2] == 'X';
}

// The helper, in the forked child: async-signal-safe calls only.
[[noreturn]] void HelperMain(const HelperPlan& plan, int armed_fd) {
  // Keep stderr (the server's log) and the armed pipe; drop the rest, the
  // server's /dev/fuse descriptors first of all (holding them would keep
  // its connections alive after it dies).
  if (armed_fd != 3) {
    dup2(armed_fd, 3);
  }
  syscall(SYS_close_range, 4U, ~0U, 0U);
  setsid();
  prctl(PR_SET_NAME, "lp-watchdog");
  struct sigaction ign = {};
  ign.sa_handler = SIG_IGN;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) {
    sigaction(sig, &ign, nullptr);
  }
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_SETMASK, &usr1, nullptr);
  prctl(PR_SET_PDEATHSIG, SIGUSR1);
  // The abort files, opened now: a connection removed later (its mount
  // unmounted) leaves these descriptors pointing at nothing, so a write can
  // never reach a newer mount that got the same number.
  int fds[64];
  const size_t n = plan.abort_paths.size() < 64 ? plan.abort_paths.size() : 64;
  for (size_t i = 0; i < n; ++i) {
    fds[i] = open(plan.abort_paths[i].c_str(), O_WRONLY | O_CLOEXEC);
  }
  WriteAll(3, "1", 1);
  close(3);
  // The death signal comes when the server's main thread dies; anyone may
  // send a SIGUSR1 too, so the server's state decides.
  while (getppid() == plan.server && !ServerDead(plan)) {
    siginfo_t info;
    sigwaitinfo(&usr1, &info);
  }
  WriteAll(2, plan.log_head.data(), plan.log_head.size());
  bool first = true;
  for (size_t i = 0; i < n; ++i) {
    if (fds[i] < 0 || write(fds[i], "1", 1) != 1) continue;
    if (!first) WriteAll(2, ", ", 2);
    WriteAll(2, plan.abort_labels[i].data(), plan.abort_labels[i].size());
    first = false;
  }
  WriteAll(2, plan.log_tail.data(), plan.log_tail.size());
  _exit(0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ConnectionWatchdog>> ConnectionWatchdog::Start(
    const std::vector<long>& ids) {
  HelperPlan plan;
  plan.server = getpid();
  plan.stat_path = absl::StrCat("/proc/", plan.server, "/stat");
  if (ids.size() > 64) {
    return absl::InvalidArgumentError("the FUSE watchdog takes 64 connections");
  }
  for (long id : ids) {
    struct stat st;
    if (id < 0 || stat(AbortPath(id).c_str(), &st) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("no fusectl abort file for FUSE connection ", id,
                       " (is /sys/fs/fuse/connections mounted?)"));
    }
    plan.abort_paths.push_back(AbortPath(id));
    plan.abort_labels.push_back(absl::StrCat(id));
  }
  // The line, formatted as core/log's (its timestamp left out: no clock
  // formatting after fork).
  plan.log_head =
      absl::StrCat("W lazypull-watchdog: FUSE watchdog: server ", plan.server,
                   " died without unmounting; aborted connection(s) [");
  plan.log_tail = "] (its mounts answer ENOTCONN until unmounted)\n";
  // The helper says on this pipe when it is armed (its death signal set,
  // its abort files open): until then it could miss this thread's death.
  int armed[2];
  if (pipe2(armed, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe");
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(armed[0]);
    close(armed[1]);
    return ErrnoToStatus(err, "starting the FUSE watchdog (fork)");
  }
  if (pid == 0) HelperMain(plan, armed[1]);
  close(armed[1]);
  std::unique_ptr<ConnectionWatchdog> w(new ConnectionWatchdog(pid));
  struct pollfd p = {armed[0], POLLIN, 0};
  char byte = 0;
  const bool ok = poll(&p, 1, 5000) == 1 && read(armed[0], &byte, 1) == 1;
  close(armed[0]);
  if (!ok) {
    return absl::UnavailableError(
        "the FUSE watchdog did not report armed within 5 s");
  }
  return w;
}

void ConnectionWatchdog::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

}  // namespace lazypull
