#include "cli/mount_record.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/digest.h"
#include "core/log.h"
#include "core/process_stat.h"

namespace lazypull::cli {

std::string RuntimeDir() {
  if (geteuid() == 0) return "/run/lazypull";
  if (const char* x = getenv("XDG_RUNTIME_DIR"); x && *x) {
    return absl::StrCat(x, "/lazypull");
  }
  return absl::StrCat("/tmp/lazypull-", geteuid());
}

std::string MountRecordPath(const std::string& mountpoint) {
  return absl::StrCat(RuntimeDir(), "/",
                      Sha256::Of(mountpoint).Hex().substr(0, 16), ".pid");
}

uint64_t ProcessStartTicks(pid_t pid) {
  const std::vector<std::string> f = ProcessStatFields(pid);
  // Field 22 (starttime) is f[19].
  uint64_t ticks = 0;
  if (f.size() < 20 || !absl::SimpleAtoi(f[19], &ticks)) return 0;
  return ticks;
}

namespace {

// A path or reference as one line of the record: C-escaped, so that a
// newline in it cannot end the line (and start a forged "run" line).
std::string Field(const std::string& s) { return absl::CEscape(s); }

// The field back; a line that does not unescape (a record of an older
// version, written raw) is taken as it is.
std::string Unfield(const std::string& line) {
  std::string out;
  return absl::CUnescape(line, &out) ? out : line;
}

// Whether `st` is this user's and no one else may write it (a record, or
// the directory holding it: /tmp/lazypull-UID may have been made first by
// another user, to plant records that make `unmount` signal a process of
// this user's choosing).
bool Private(const struct stat& st) {
  return st.st_uid == geteuid() && (st.st_mode & 022) == 0;
}

bool PrivateDirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  struct stat st;
  return lstat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && Private(st);
}

}  // namespace

void WriteMountRecord(const std::string& path, MountRecord record) {
  record.pid = getpid();
  record.start_ticks = ProcessStartTicks(record.pid);
  mkdir(RuntimeDir().c_str(), 0700);
  if (!PrivateDirOf(path)) {
    LogWarning("no mount record written: the directory of ", path,
               " is not this user's alone (`lazypull unmount` will not find "
               "this server)");
    return;
  }
  std::ostringstream out;
  out << record.pid << "\n" << Field(record.mountpoint) << "\n";
  if (!record.image_ref.empty()) {
    out << "image " << Field(record.image_ref) << "\n";
  }
  out << "start " << record.start_ticks << "\n";
  if (!record.run_dir.empty()) out << "run " << Field(record.run_dir) << "\n";
  // Written whole, then renamed: a reader never sees half a record.
  const std::string tmp = absl::StrCat(path, ".", record.pid);
  unlink(tmp.c_str());
  const int fd = open(
      tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return;
  const std::string text = out.str();
  const bool whole =
      write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  if (!whole || rename(tmp.c_str(), path.c_str()) != 0) unlink(tmp.c_str());
}

std::optional<MountRecord> ReadMountRecord(const std::string& path) {
  // Only a record this user wrote, in a directory only it writes.
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st;
  const bool trusted = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                       Private(st) && PrivateDirOf(path);
  std::string text;
  if (trusted) {
    char buf[4096];
    for (ssize_t n;
         (n = read(fd, buf, sizeof(buf))) > 0 && text.size() < (1 << 16);) {
      text.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  if (!trusted) {
    LogWarning("mount record ", path,
               " ignored: it, or its directory, is not this user's alone");
    return std::nullopt;
  }
  std::istringstream in(text);
  MountRecord r;
  std::string line;
  if (!std::getline(in, line) || !absl::SimpleAtoi(line, &r.pid) ||
      r.pid <= 0) {
    return std::nullopt;
  }
  if (!std::getline(in, line)) return std::nullopt;
  r.mountpoint = Unfield(line);
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "image ")) {
      r.image_ref = Unfield(line.substr(6));
    } else if (absl::StartsWith(line, "start ")) {
      (void)absl::SimpleAtoi(line.substr(6), &r.start_ticks);
    } else if (absl::StartsWith(line, "run ")) {
      r.run_dir = Unfield(line.substr(4));
    }
  }
  return r;
}

void RemoveOwnMountRecord(const std::string& path) {
  std::optional<MountRecord> r = ReadMountRecord(path);
  if (r && r->pid == getpid()) unlink(path.c_str());
}

bool ServerAlive(const MountRecord& record) {
  if (record.pid <= 0 || kill(record.pid, 0) != 0) return false;
  const std::vector<std::string> f = ProcessStatFields(record.pid);
  // A zombie has finished (its parent has not reaped it yet).
  if (f.empty() || f[0] == "Z" || f[0] == "X") return false;
  if (record.start_ticks != 0) {
    return ProcessStartTicks(record.pid) == record.start_ticks;
  }
  std::ifstream in(absl::StrCat("/proc/", record.pid, "/cmdline"));
  std::string argv0;
  std::getline(in, argv0, '\0');
  return absl::StrContains(argv0, "lazypull");
}

}  // namespace lazypull::cli
