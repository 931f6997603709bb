// MountRecord: what `lazypull mount` leaves in the runtime directory for
// `lazypull unmount` (one file per mountpoint): the serving process, made
// unmistakable by its start time (a pid alone may have been reused by an
// unrelated process once the server died without cleaning up), the
// mountpoint, and for an image mount its reference and the run directory
// holding its layer mounts.
//
// File format, one item per line: the pid; the mountpoint; then optional
// "image REF", "start TICKS" (field 22 of /proc/PID/stat), "run DIR"; the
// mountpoint, REF and DIR C-escaped (a newline in a path stays in its line).
//
// Thread-safety: pure functions over files; no shared state.
#ifndef LAZYPULL_CLI_MOUNT_RECORD_H_
#define LAZYPULL_CLI_MOUNT_RECORD_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace lazypull::cli {

struct MountRecord {
  pid_t pid = 0;
  uint64_t start_ticks = 0;  // 0: not recorded (an older record)
  std::string mountpoint;
  std::string image_ref;  // empty for a `mount --blob`
  std::string run_dir;    // empty for a `mount --blob`
};

// The runtime directory (/run/lazypull as root) and the record's path there
// for an absolute mountpoint.
std::string RuntimeDir();
std::string MountRecordPath(const std::string& mountpoint);

// The start time of process `pid` in clock ticks since boot, or 0.
uint64_t ProcessStartTicks(pid_t pid);

// Writes the record of this process (pid and start time filled in).
void WriteMountRecord(const std::string& path, MountRecord record);
std::optional<MountRecord> ReadMountRecord(const std::string& path);
// Removes the record at `path` only if it is this process's (a newer
// server on the same mountpoint may have replaced it).
void RemoveOwnMountRecord(const std::string& path);

// Whether the recorded server still runs: the pid exists and, when the
// start time is recorded, started then; otherwise it must at least be a
// lazypull process.
bool ServerAlive(const MountRecord& record);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_MOUNT_RECORD_H_
