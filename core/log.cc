#include "core/log.h"

#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <string>

namespace lazypull {

std::string WithoutControls(absl::string_view s, absl::string_view keep) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if ((u < 0x20 || u == 0x7f) && keep.find(c) == absl::string_view::npos) {
      absl::StrAppend(&out, "\\x", absl::Hex(u, absl::kZeroPad2));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void LogLine(LogLevel level, absl::string_view message) {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[32];
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  const char* tag = level == LogLevel::kInfo      ? "I"
                    : level == LogLevel::kWarning ? "W"
                                                  : "E";
  std::string line = absl::StrCat(
      ts, ".", absl::Dec(tv.tv_usec / 1000, absl::kZeroPad3), "Z ", tag,
      " lazypull[", getpid(), "] ", WithoutControls(message, "\t"), "\n");
  ssize_t rc = write(2, line.data(), line.size());
  (void)rc;
}

}  // namespace lazypull
