#include "fuse/mount_table.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lazypull {
namespace {

// /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
std::string Unescape(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    auto octal = [&](size_t k) { return s[k] >= '0' && s[k] <= '7'; };
    if (s[i] == '\\' && i + 3 < s.size() && octal(i + 1) && octal(i + 2) &&
        octal(i + 3)) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 +
                                      (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

std::vector<MountEntry> ReadMountTable() {
  std::vector<MountEntry> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  // id parent major:minor root mount_point options [optional...] - fstype
  // source super_options
  while (std::getline(in, line)) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ');
    if (f.size() < 10) continue;
    MountEntry e;
    if (!absl::SimpleAtoi(f[0], &e.id)) continue;
    std::vector<absl::string_view> dev = absl::StrSplit(f[2], ':');
    if (dev.size() != 2 || !absl::SimpleAtoi(dev[0], &e.major) ||
        !absl::SimpleAtoi(dev[1], &e.minor)) {
      continue;
    }
    e.root = Unescape(f[3]);
    e.mount_point = Unescape(f[4]);
    size_t k = 6;
    while (k < f.size() && f[k] != "-") ++k;
    if (k + 2 >= f.size()) continue;
    e.fstype = Unescape(f[k + 1]);
    e.source = Unescape(f[k + 2]);
    if (k + 3 < f.size()) e.super_options = Unescape(f[k + 3]);
    out.push_back(std::move(e));
  }
  return out;
}

std::optional<MountEntry> TopMountAt(const std::string& path) {
  std::optional<MountEntry> top;
  for (MountEntry& e : ReadMountTable()) {
    if (e.mount_point == path) top = std::move(e);
  }
  return top;
}

namespace {
constexpr char kFuseCtl[] = "/sys/fs/fuse/connections";
}  // namespace

std::string FuseAbortPath(long id) {
  return absl::StrCat(kFuseCtl, "/", id, "/abort");
}

int OpenFuseAbortFile(long id) {
  const std::string path = FuseAbortPath(id);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT && geteuid() == 0 &&
      mount("fusectl", kFuseCtl, "fusectl", 0, nullptr) == 0) {
    fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  }
  return fd;
}

std::string PathWithoutTouchingIt(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : p.substr(0, slash);
  const std::string base = slash == std::string::npos ? p : p.substr(slash + 1);
  char buf[PATH_MAX];
  if (base.empty() || base == "." || base == "..") {
    // (Resolving the last component is unavoidable here.)
    if (realpath(p.c_str(), buf) != nullptr) return buf;
  } else if (realpath(dir.c_str(), buf) != nullptr) {
    const std::string d = buf;
    return d == "/" ? "/" + base : absl::StrCat(d, "/", base);
  }
  if (!p.empty() && p[0] == '/') return p;
  char cwd[PATH_MAX];
  if (getcwd(cwd, sizeof(cwd)) == nullptr) return p;
  return absl::StrCat(cwd, "/", p);
}

}  // namespace lazypull
