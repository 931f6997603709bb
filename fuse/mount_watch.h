// MountWatch: tells a serving process that its mount was taken away by
// someone else (`umount`, `umount -l`), so that it can end its layers and
// itself instead of serving nobody for ever.
//
// It watches /proc/self/mountinfo (poll wakes with POLLPRI on every change
// of this namespace's mount table) and, after each change, looks for the
// mount it was given: the same id, device and type (ids are unique while a
// mount exists). A mount stacked on top of it, one moved elsewhere (mount
// --move, a parent directory renamed), or one mounted elsewhere too, is not
// a reason to end; nor is a table that cannot be read. "Gone" takes two
// looks 100 ms apart.
//
// Thread-safety: the callback runs once, on the watch's own thread; the
// destructor stops the thread (waiting out a running callback), from any
// other thread.
#ifndef LAZYPULL_FUSE_MOUNT_WATCH_H_
#define LAZYPULL_FUSE_MOUNT_WATCH_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "fuse/mount_table.h"

namespace lazypull {

class MountWatch {
 public:
  // Starts watching for `mount` (an entry of ReadMountTable()) to leave the
  // table; then runs `on_gone` once.
  MountWatch(MountEntry mount, std::function<void()> on_gone);
  ~MountWatch();
  MountWatch(const MountWatch&) = delete;
  MountWatch& operator=(const MountWatch&) = delete;

 private:
  void Run();
  bool Gone();

  const MountEntry mount_;
  const std::function<void()> on_gone_;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: starts once the rest is set
};

// Whether the table holds `m` (same id, device and type); true when the
// table cannot be read.
bool StillMounted(const MountEntry& m);

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_MOUNT_WATCH_H_
