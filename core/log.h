// Log lines: one line per event, timestamped, to stderr (which a daemonized
// mount points at its log file).
//
// Thread-safety: safe from any thread (each line is one write(2)).
#ifndef LAZYPULL_CORE_LOG_H_
#define LAZYPULL_CORE_LOG_H_

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lazypull {

enum class LogLevel { kInfo, kWarning, kError };

// Writes one line. Control characters in `message` (a registry's error
// text, a name from a layer: bytes from elsewhere) are written as \xNN, so
// that they can neither drive the terminal (ESC sequences) nor start a
// forged line; other bytes, UTF-8 included, as they are.
void LogLine(LogLevel level, absl::string_view message);

// `s` with its control characters (below 0x20 but for those in `keep`, and
// 0x7f) written as \xNN.
std::string WithoutControls(absl::string_view s, absl::string_view keep = "");

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
