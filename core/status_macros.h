// Status propagation macros used across lazypull.
//
// Debian's abseil (20220623) ships no status macros, so they are defined once
// here and used everywhere; no other file defines its own.
//
//   RETURN_IF_ERROR(expr);          // expr is an absl::Status
//   ASSIGN_OR_RETURN(T v, expr);    // expr is an absl::StatusOr<T>
//
// Also Restated(status, message): the status with a new message (context
// added), its code and payloads kept, so that marks such as fetch/http.h's
// IsRangeIgnored survive the wrapping.
//
// Thread-safety: no state.
#ifndef LAZYPULL_CORE_STATUS_MACROS_H_
#define LAZYPULL_CORE_STATUS_MACROS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"

namespace lazypull {
inline absl::Status Restated(const absl::Status& s, std::string message) {
  absl::Status out(s.code(), message);
  s.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) {
    out.SetPayload(url, payload);
  });
  return out;
}
}  // namespace lazypull

#define LAZYPULL_CONCAT_INNER_(a, b) a##b
#define LAZYPULL_CONCAT_(a, b) LAZYPULL_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                            \
  do {                                                   \
    ::absl::Status lazypull_status_ = (expr);            \
    if (!lazypull_status_.ok()) return lazypull_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  LAZYPULL_ASSIGN_OR_RETURN_IMPL_(   \
      LAZYPULL_CONCAT_(lazypull_statusor_, __LINE__), lhs, rexpr)

#define LAZYPULL_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                    \
  if (!statusor.ok()) return std::move(statusor).status();    \
  lhs = std::move(statusor).value()

#endif  // LAZYPULL_CORE_STATUS_MACROS_H_
