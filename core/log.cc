#include "core/log.h"

#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <string>

namespace lazypull {

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
  std::string line =
      absl::StrCat(ts, ".", absl::Dec(tv.tv_usec / 1000, absl::kZeroPad3), "Z ",
                   tag, " lazypull[", getpid(), "] ", message, "\n");
  ssize_t rc = write(2, line.data(), line.size());
  (void)rc;
}

}  // namespace lazypull
