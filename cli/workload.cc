#include "cli/workload.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace lazypull::cli {
namespace {

constexpr char kDefaultPath[] =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The lines of rootfs/etc/<name> split at ':' (missing file: none).
std::vector<std::vector<std::string>> ReadDb(const std::string& rootfs,
                                             const char* name) {
  std::vector<std::vector<std::string>> out;
  std::ifstream f(absl::StrCat(rootfs, "/etc/", name));
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    out.push_back(absl::StrSplit(line, ':'));
  }
  return out;
}

// A directory for a mountpoint inside the root: created if missing.
absl::Status EnsureDir(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat(path, " exists and is not a directory"));
  }
  if (mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, absl::StrCat("mkdir ", path));
  }
  return absl::OkStatus();
}

// What the child reports through the pipe when a step fails.
struct ChildError {
  int step;
  int err;
};
constexpr const char* kSteps[] = {
    "setting up the mount namespace",
    "mounting /proc",
    "mounting /dev",
    "binding a device node",
    "mounting /tmp",
    "chroot",
    "chdir to the working dir",
    "setgroups",
    "setgid",
    "setuid",
    "exec /bin/sh",
};

}  // namespace

absl::StatusOr<ResolvedUser> ResolveUser(const std::string& rootfs,
                                         const std::string& user) {
  ResolvedUser r;
  if (user.empty()) return r;
  std::vector<std::string> ug = absl::StrSplit(user, absl::MaxSplits(':', 1));
  const std::string& u = ug[0];
  std::optional<std::string> g;
  if (ug.size() == 2) g = ug[1];
  std::string name;
  bool found = false;
  uint32_t id;
  for (const auto& e : ReadDb(rootfs, "passwd")) {
    if (e.size() < 4) continue;
    uint32_t uid, gid;
    if (!absl::SimpleAtoi(e[2], &uid) || !absl::SimpleAtoi(e[3], &gid)) {
      continue;
    }
    if (e[0] == u || (absl::SimpleAtoi(u, &id) && id == uid)) {
      r.uid = uid;
      r.gid = gid;
      name = e[0];
      found = true;
      break;
    }
  }
  if (!found) {
    if (!absl::SimpleAtoi(u, &id)) {
      return absl::NotFoundError(absl::StrCat(
          "user \"", u, "\" of the image config is not in its /etc/passwd"));
    }
    r.uid = id;
  }
  const auto groups = ReadDb(rootfs, "group");
  if (g) {
    bool gfound = false;
    for (const auto& e : groups) {
      uint32_t gid;
      if (e.size() < 3 || !absl::SimpleAtoi(e[2], &gid)) continue;
      if (e[0] == *g || (absl::SimpleAtoi(*g, &id) && id == gid)) {
        r.gid = gid;
        gfound = true;
        break;
      }
    }
    if (!gfound) {
      if (!absl::SimpleAtoi(*g, &id)) {
        return absl::NotFoundError(absl::StrCat(
            "group \"", *g, "\" of the image config is not in its /etc/group"));
      }
      r.gid = id;
    }
  }
  r.groups.push_back(r.gid);
  if (!name.empty()) {
    for (const auto& e : groups) {
      uint32_t gid;
      if (e.size() < 4 || !absl::SimpleAtoi(e[2], &gid) || gid == r.gid) {
        continue;
      }
      for (absl::string_view m : absl::StrSplit(e[3], ',')) {
        if (m == name) r.groups.push_back(gid);
      }
    }
  }
  return r;
}

absl::StatusOr<WorkloadResult> RunWorkload(const WorkloadSpec& spec) {
  if (spec.rootfs.empty() || spec.command.empty()) {
    return absl::InvalidArgumentError("a workload needs a root and a command");
  }
  ASSIGN_OR_RETURN(ResolvedUser user, ResolveUser(spec.rootfs, spec.user));
  const std::string proc = spec.rootfs + "/proc";
  const std::string dev = spec.rootfs + "/dev";
  const std::string tmp = spec.rootfs + "/tmp";
  RETURN_IF_ERROR(EnsureDir(proc));
  RETURN_IF_ERROR(EnsureDir(dev));
  RETURN_IF_ERROR(EnsureDir(tmp));

  // Everything the child needs is prepared here: after fork() in a threaded
  // process it may only make system calls.
  static constexpr const char* kNodes[] = {"null",   "zero",    "full",
                                           "random", "urandom", "tty"};
  std::vector<std::string> node_src, node_dst;
  for (const char* n : kNodes) {
    node_src.push_back(absl::StrCat("/dev/", n));
    node_dst.push_back(absl::StrCat(dev, "/", n));
  }
  const std::string pts = dev + "/pts", shm = dev + "/shm";
  const std::vector<std::pair<std::string, std::string>> links = {
      {"/proc/self/fd", dev + "/fd"},
      {"/proc/self/fd/0", dev + "/stdin"},
      {"/proc/self/fd/1", dev + "/stdout"},
      {"/proc/self/fd/2", dev + "/stderr"},
  };
  const std::string workdir = spec.working_dir.empty() ? "/" : spec.working_dir;
  std::vector<std::string> env = spec.env;
  bool have_path = false, have_home = false;
  for (const std::string& e : env) {
    have_path |= e.rfind("PATH=", 0) == 0;
    have_home |= e.rfind("HOME=", 0) == 0;
  }
  if (!have_path) env.push_back(kDefaultPath);
  if (!have_home) env.push_back(user.uid == 0 ? "HOME=/root" : "HOME=/");
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string sh = "/bin/sh", dash_c = "-c", cmd = spec.command;
  char* argv[] = {sh.data(), dash_c.data(), cmd.data(), nullptr};
  const std::vector<gid_t> groups = user.groups;

  int errpipe[2];
  if (pipe2(errpipe, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe2");
  if (spec.on_start) spec.on_start();
  const absl::Time start = absl::Now();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(errpipe[0]);
    close(errpipe[1]);
    return ErrnoToStatus(e, "fork");
  }
  if (pid == 0) {
    auto fail = [&](int step) {
      ChildError ce{step, errno};
      (void)!write(errpipe[1], &ce, sizeof(ce));
      _exit(127);
    };
    setpgid(0, 0);
    if (unshare(CLONE_NEWNS) != 0) fail(0);
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      fail(0);
    }
    if (mount("proc", proc.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              nullptr) != 0) {
      fail(1);
    }
    if (mount("tmpfs", dev.c_str(), "tmpfs", MS_NOSUID | MS_NOEXEC,
              "mode=755,size=1m") != 0) {
      fail(2);
    }
    for (size_t i = 0; i < node_src.size(); ++i) {
      int fd = open(node_dst[i].c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
      if (fd < 0) fail(3);
      close(fd);
      if (mount(node_src[i].c_str(), node_dst[i].c_str(), nullptr, MS_BIND,
                nullptr) != 0) {
        fail(3);
      }
    }
    mkdir(pts.c_str(), 0755);
    mkdir(shm.c_str(), 01777);
    for (const auto& [target, link] : links) {
      (void)!symlink(target.c_str(), link.c_str());
    }
    if (mount("tmpfs", tmp.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
              "mode=1777") != 0) {
      fail(4);
    }
    if (chroot(spec.rootfs.c_str()) != 0) fail(5);
    if (chdir(workdir.c_str()) != 0) fail(6);
    if (setgroups(groups.size(), groups.data()) != 0) fail(7);
    if (setgid(user.gid) != 0) fail(8);
    if (setuid(user.uid) != 0) fail(9);
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) {
      dup2(null_fd, 0);
      if (null_fd > 2) close(null_fd);
    }
    dup2(2, 1);
    execve(argv[0], argv, envp.data());
    fail(10);
  }
  close(errpipe[1]);
  ChildError ce{};
  ssize_t got;
  do {
    got = read(errpipe[0], &ce, sizeof(ce));
  } while (got < 0 && errno == EINTR);
  close(errpipe[0]);
  if (got == static_cast<ssize_t>(sizeof(ce))) {
    waitpid(pid, nullptr, 0);
    const int step = ce.step >= 0 && ce.step < 11 ? ce.step : 10;
    return ErrnoToStatus(
        ce.err, absl::StrCat("starting the workload: ", kSteps[step],
                             step == 6 ? absl::StrCat(" ", workdir) : ""));
  }

  WorkloadResult r;
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  int status = 0;
  bool exited = false;
  while (!exited) {
    const absl::Duration left = start + spec.period - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    if (pidfd >= 0) {
      struct pollfd p = {pidfd, POLLIN, 0};
      int ms = static_cast<int>(absl::ToInt64Milliseconds(left)) + 1;
      if (poll(&p, 1, ms) < 0 && errno != EINTR) break;
    } else {
      usleep(10000);
    }
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) exited = true;
  }
  if (!exited) {
    r.timed_out = true;
    kill(-pid, SIGKILL);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  r.elapsed = absl::Now() - start;
  // Whatever the workload left running in its group goes too.
  kill(-pid, SIGKILL);
  if (pidfd >= 0) close(pidfd);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

}  // namespace lazypull::cli
