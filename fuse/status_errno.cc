#include "fuse/status_errno.h"

#include <errno.h>

namespace lazypull {

int StatusToErrno(const absl::Status& status) {
  // Not a code-by-code mapping: a failed read's code describes where the
  // bytes were (fetch/http.h maps a registry's 403 to PermissionDenied, 404
  // to NotFound, 429 to ResourceExhausted, 501 to Unimplemented, ...), not
  // the open file the reader asked about.
  return status.ok() ? 0 : EIO;
}

}  // namespace lazypull
