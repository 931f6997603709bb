// Translation of the errno domain into absl::Status.
//
// The one place where an errno value becomes a Status; the raw code is kept in
// the message ("open /x: No such file or directory (errno 2)"). The reverse
// direction (Status -> errno) lives at the FUSE edge only.
//
// Thread-safety: pure functions, safe from any thread.
#ifndef LAZYPULL_CORE_ERRNO_STATUS_H_
#define LAZYPULL_CORE_ERRNO_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lazypull {

// Returns a non-OK status for `err` (an errno value) with `what` as context.
// REQUIRES: err != 0.
absl::Status ErrnoToStatus(int err, absl::string_view what);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_ERRNO_STATUS_H_
