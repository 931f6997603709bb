#include "fuse/mount_watch.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <utility>

namespace lazypull {

bool StillMounted(const MountEntry& m) {
  for (const MountEntry& e : ReadMountTable()) {
    if (e.id == m.id && e.fstype == m.fstype &&
        e.mount_point == m.mount_point) {
      return true;
    }
  }
  return false;
}

MountWatch::MountWatch(MountEntry mount, std::function<void()> on_gone)
    : mount_(std::move(mount)),
      on_gone_(std::move(on_gone)),
      thread_([this] { Run(); }) {}

MountWatch::~MountWatch() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void MountWatch::Run() {
  const int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // no procfs: nothing to watch
  // Polls report each change after the open; one before it is seen here.
  // Every 250 ms the stop flag is looked at.
  bool gone = !StillMounted(mount_);
  while (!gone && !stop_.load()) {
    pollfd p{fd, POLLPRI, 0};
    const int n = poll(&p, 1, 250);
    if (n <= 0 || (p.revents & (POLLPRI | POLLERR)) == 0) continue;
    gone = !StillMounted(mount_);
  }
  close(fd);
  if (gone && !stop_.load()) on_gone_();
}

}  // namespace lazypull
