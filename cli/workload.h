// Running a workload inside a root filesystem, as a container would see it,
// for `optimize` (which records what it reads from the layers underneath).
//
// The workload is contained as a container runtime contains one: private
// mount and pid namespaces (an init process, pid 1, reaps what it leaves
// and ends it all with it; the workload's shell is pid 2), in which
// `rootfs` (a writable root: optimize gives it an overlay with a throwaway
// upper dir) receives /proc (procfs of the new pid namespace), a minimal
// /dev (tmpfs with null, zero, full, random, urandom and tty bound from the
// host, the fd/stdin/stdout/stderr links, shm and pts dirs) and a tmpfs
// /tmp; then pivot_root into it (the host's root is detached: unlike a
// chroot, a root workload cannot climb out), chdir to the working dir,
// Docker's default capability set as the bounding set (no CAP_SYS_ADMIN,
// CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_MODULE, ...), the image's
// user and groups (resolved from the image's own /etc/passwd and
// /etc/group, regular files read beneath the root without following
// symlinks), the image's environment (PATH defaulting to the usual one),
// and `/bin/sh -c COMMAND`. Its network is the host's. The workload's
// stdout goes to our stderr (a command's stdout stays free for its
// report); stdin is /dev/null. It runs in a process group of its own,
// killed (SIGKILL) when `period` ends or when its leader exits.
//
// Thread-safety: RunWorkload may be called from any thread; it forks.
#ifndef LAZYPULL_CLI_WORKLOAD_H_
#define LAZYPULL_CLI_WORKLOAD_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lazypull::cli {

struct WorkloadSpec {
  std::string rootfs;   // REQUIRED: a directory holding the root filesystem
  std::string command;  // REQUIRED: run with /bin/sh -c
  std::vector<std::string> env;  // "NAME=value" (the image's config.Env)
  std::string working_dir;       // default "/"
  std::string user;  // "name|uid[:group|gid]", resolved in rootfs's /etc
  absl::Duration period = absl::Seconds(10);
  // Called in the parent right before the workload starts, after every
  // file of the root it needed (passwd, group) was read: optimize starts
  // recording here.
  std::function<void()> on_start;
  // If set, holds the workload's process group while it runs (0 before and
  // after): a signal handler may kill it.
  std::atomic<pid_t>* running_group = nullptr;
  // If not 0, the workload's soft open-file limit (at most the hard one):
  // the limit the caller started with when it raised its own.
  uint64_t open_file_soft_limit = 0;
};

struct WorkloadResult {
  bool timed_out = false;  // still running when `period` ended (killed)
  int exit_code = -1;      // exit status, when it exited
  int signal = 0;          // the signal that ended it, when one did
  absl::Duration elapsed;
};

// Resolves `user` ("name", "uid", "name:group", "uid:gid", ...) against
// `rootfs`/etc/passwd and /etc/group: uid, gid and supplementary groups.
// A numeric uid absent from passwd is allowed (gid 0 unless given).
struct ResolvedUser {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};
absl::StatusOr<ResolvedUser> ResolveUser(const std::string& rootfs,
                                         const std::string& user);

absl::StatusOr<WorkloadResult> RunWorkload(const WorkloadSpec& spec);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_WORKLOAD_H_
