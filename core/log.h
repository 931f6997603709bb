// Log lines: one line per event, timestamped, to stderr (which a daemonized
// mount points at its log file).
//
// Thread-safety: safe from any thread (each line is one write(2)).
#ifndef LAZYPULL_CORE_LOG_H_
#define LAZYPULL_CORE_LOG_H_

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lazypull {

enum class LogLevel { kInfo, kWarning, kError };

void LogLine(LogLevel level, absl::string_view message);

template <typename... Args>
void LogInfo(const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrCat(args...));
}
template <typename... Args>
void LogWarning(const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrCat(args...));
}
template <typename... Args>
void LogError(const Args&... args) {
  LogLine(LogLevel::kError, absl::StrCat(args...));
}

}  // namespace lazypull

#endif  // LAZYPULL_CORE_LOG_H_
