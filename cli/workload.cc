#include "cli/workload.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/errno_status.h"
#include "core/node_writer.h"
#include "core/status_macros.h"

namespace lazypull::cli {
namespace {

constexpr char kDefaultPath[] =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The lines of rootfs/etc/<name> split at ':' (missing file: none). The
// file is looked up beneath the root without following a symlink (the
// image's /etc/passwd must not lead to the host's) and read only if it is a
// regular file, at most 4 MiB of it.
std::vector<std::vector<std::string>> ReadDb(const std::string& rootfs,
                                             const char* name) {
  std::vector<std::vector<std::string>> out;
  ScopedFd root(
      open(rootfs.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!root.valid()) return out;
  absl::StatusOr<ScopedFd> etc = OpenDirBeneath(root.get(), {"etc"}, false);
  if (!etc.ok()) return out;
  ScopedFd f(openat(etc->get(), name,
                    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  struct stat st;
  if (!f.valid() || fstat(f.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return out;
  }
  std::string text;
  char buf[65536];
  ssize_t n;
  while (text.size() < (4u << 20) &&
         (n = read(f.get(), buf, sizeof(buf))) > 0) {
    text.append(buf, static_cast<size_t>(n));
  }
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
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
enum Step {
  kNamespaces,
  kRootMount,
  kProc,
  kDev,
  kDevNode,
  kTmp,
  kPivotRoot,
  kChdirWorkdir,
  kCapabilities,
  kSetgroups,
  kSetgid,
  kSetuid,
  kExec,
  kNumSteps,
};
constexpr const char* kSteps[kNumSteps] = {
    "setting up the mount and pid namespaces",
    "making the root a mount point",
    "mounting /proc",
    "mounting /dev",
    "binding a device node",
    "mounting /tmp",
    "pivot_root into the root",
    "chdir to the working dir",
    "dropping capabilities",
    "setgroups",
    "setgid",
    "setuid",
    "exec /bin/sh",
};

// The capabilities a workload keeps (Docker's default set); every other
// one leaves the bounding set, so that a root workload cannot mount,
// load modules, trace or open files by handle on the host.
constexpr int kKeptCaps[] = {
    CAP_CHOWN,       CAP_DAC_OVERRIDE, CAP_FOWNER,
    CAP_FSETID,      CAP_KILL,         CAP_SETGID,
    CAP_SETUID,      CAP_SETPCAP,      CAP_NET_BIND_SERVICE,
    CAP_NET_RAW,     CAP_SYS_CHROOT,   CAP_MKNOD,
    CAP_AUDIT_WRITE, CAP_SETFCAP,
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
    // A mount namespace of its own, and a pid namespace whose init (the
    // next process) reaps what the workload leaves and ends it all with
    // it; the workload (the one after) sees none of the host's processes.
    // This process only relays the workload's end, which init sends it.
    int status_pipe[2];
    if (pipe2(status_pipe, O_CLOEXEC) != 0) fail(kNamespaces);
    if (unshare(CLONE_NEWNS | CLONE_NEWPID) != 0) fail(kNamespaces);
    const pid_t init = fork();
    if (init < 0) fail(kNamespaces);
    if (init > 0) {
      close(errpipe[1]);
      close(status_pipe[1]);
      int st = 0;
      ssize_t n;
      do {
        n = read(status_pipe[0], &st, sizeof(st));
      } while (n < 0 && errno == EINTR);
      while (waitpid(init, nullptr, 0) < 0 && errno == EINTR) {
      }
      if (n != static_cast<ssize_t>(sizeof(st))) _exit(127);
      if (WIFSIGNALED(st)) {
        signal(WTERMSIG(st), SIG_DFL);
        kill(getpid(), WTERMSIG(st));
      }
      _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 127);
    }
    close(status_pipe[0]);
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      fail(kNamespaces);
    }
    // pivot_root needs the root to be a mount point.
    if (mount(spec.rootfs.c_str(), spec.rootfs.c_str(), nullptr,
              MS_BIND | MS_REC, nullptr) != 0) {
      fail(kRootMount);
    }
    if (mount("proc", proc.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              nullptr) != 0) {
      fail(kProc);
    }
    if (mount("tmpfs", dev.c_str(), "tmpfs", MS_NOSUID | MS_NOEXEC,
              "mode=755,size=1m") != 0) {
      fail(kDev);
    }
    for (size_t i = 0; i < node_src.size(); ++i) {
      int fd = open(node_dst[i].c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
      if (fd < 0) fail(kDevNode);
      close(fd);
      if (mount(node_src[i].c_str(), node_dst[i].c_str(), nullptr, MS_BIND,
                nullptr) != 0) {
        fail(kDevNode);
      }
    }
    mkdir(pts.c_str(), 0755);
    mkdir(shm.c_str(), 01777);
    for (const auto& [target, link] : links) {
      (void)!symlink(target.c_str(), link.c_str());
    }
    if (mount("tmpfs", tmp.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
              "mode=1777") != 0) {
      fail(kTmp);
    }
    // pivot_root, not chroot: the host's root is detached, so a root
    // workload cannot climb out of it (chroot(2) twice escapes a chroot).
    // (runc's sequence: pivot_root(".", ".") stacks the old root on the
    // new one, which is then unmounted from under it.)
    const int old_root = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    const int new_root =
        open(spec.rootfs.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    if (old_root < 0 || new_root < 0 || fchdir(new_root) != 0 ||
        syscall(SYS_pivot_root, ".", ".") != 0 || fchdir(old_root) != 0 ||
        mount(nullptr, ".", nullptr, MS_SLAVE | MS_REC, nullptr) != 0 ||
        umount2(".", MNT_DETACH) != 0 || chdir("/") != 0) {
      fail(kPivotRoot);
    }
    close(old_root);
    close(new_root);
    const pid_t workload = fork();
    if (workload < 0) fail(kNamespaces);
    if (workload > 0) {
      close(errpipe[1]);
      int st = 0;
      for (;;) {
        int any;
        const pid_t r = waitpid(-1, &any, 0);
        if (r == workload) {
          st = any;
          break;
        }
        if (r < 0 && errno != EINTR) break;
      }
      (void)!write(status_pipe[1], &st, sizeof(st));
      _exit(0);
    }
    close(status_pipe[1]);
    if (chdir(workdir.c_str()) != 0) fail(kChdirWorkdir);
    for (int cap = 0; cap < 64; ++cap) {
      if (std::find(std::begin(kKeptCaps), std::end(kKeptCaps), cap) !=
          std::end(kKeptCaps)) {
        continue;
      }
      if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) {
        fail(kCapabilities);
      }
    }
    if (setgroups(groups.size(), groups.data()) != 0) fail(kSetgroups);
    if (setgid(user.gid) != 0) fail(kSetgid);
    if (setuid(user.uid) != 0) fail(kSetuid);
    int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) {
      dup2(null_fd, 0);
      if (null_fd > 2) close(null_fd);
    }
    dup2(2, 1);
    struct rlimit nofile;
    if (spec.open_file_soft_limit != 0 &&
        getrlimit(RLIMIT_NOFILE, &nofile) == 0 &&
        spec.open_file_soft_limit < nofile.rlim_cur) {
      nofile.rlim_cur = spec.open_file_soft_limit;
      (void)setrlimit(RLIMIT_NOFILE, &nofile);
    }
    execve(argv[0], argv, envp.data());
    fail(kExec);
  }
  setpgid(pid, pid);  // (as the child does: whichever runs first)
  if (spec.running_group != nullptr) spec.running_group->store(pid);
  close(errpipe[1]);
  ChildError ce{};
  ssize_t got;
  do {
    got = read(errpipe[0], &ce, sizeof(ce));
  } while (got < 0 && errno == EINTR);
  close(errpipe[0]);
  if (got == static_cast<ssize_t>(sizeof(ce))) {
    waitpid(pid, nullptr, 0);
    if (spec.running_group != nullptr) spec.running_group->store(0);
    const int step = ce.step >= 0 && ce.step < kNumSteps ? ce.step : kExec;
    return ErrnoToStatus(
        ce.err,
        absl::StrCat("starting the workload: ", kSteps[step],
                     step == kChdirWorkdir ? absl::StrCat(" ", workdir) : ""));
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
  if (spec.running_group != nullptr) spec.running_group->store(0);
  if (pidfd >= 0) close(pidfd);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

}  // namespace lazypull::cli
