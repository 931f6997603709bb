#include "fuse/mount_watch.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <utility>
#include <vector>

namespace lazypull {

bool StillMounted(const MountEntry& m) {
  const std::vector<MountEntry> table = ReadMountTable();
  // A table that could not be read (no descriptor left, no memory) holds at
  // least the root: without it nothing is known, and nothing is gone.
  bool root = false;
  for (const MountEntry& e : table) {
    if (e.id == m.id && e.major == m.major && e.minor == m.minor &&
        e.fstype == m.fstype) {
      return true;
    }
    root = root || e.mount_point == "/";
  }
  return !root;
}

MountWatch::MountWatch(MountEntry mount, std::function<void()> on_gone)
    : mount_(std::move(mount)),
      on_gone_(std::move(on_gone)),
      thread_([this] { Run(); }) {}

MountWatch::~MountWatch() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

bool MountWatch::Gone() {
  if (StillMounted(mount_)) return false;
  // Only if a second look, a moment later, agrees (a table read while it
  // changes may miss lines on older kernels).
  usleep(100 * 1000);
  return !stop_.load() && !StillMounted(mount_);
}

void MountWatch::Run() {
  const int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // no procfs: nothing to watch
  // Polls report each change after the open; one before it is seen here.
  // Every 250 ms the stop flag is looked at.
  bool gone = Gone();
  while (!gone && !stop_.load()) {
    pollfd p{fd, POLLPRI, 0};
    const int n = poll(&p, 1, 250);
    if (n <= 0 || (p.revents & (POLLPRI | POLLERR)) == 0) continue;
    gone = Gone();
  }
  close(fd);
  if (gone && !stop_.load()) on_gone_();
}

}  // namespace lazypull
