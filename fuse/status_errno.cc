#include "fuse/status_errno.h"

#include <errno.h>

namespace lazypull {

int StatusToErrno(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kNotFound:
      return ENOENT;
    case absl::StatusCode::kPermissionDenied:
      return EACCES;
    case absl::StatusCode::kInvalidArgument:
      return EINVAL;
    case absl::StatusCode::kResourceExhausted:
      return ENOMEM;
    case absl::StatusCode::kUnimplemented:
      return ENOSYS;
    case absl::StatusCode::kDeadlineExceeded:
      return ETIMEDOUT;
    default:
      // DataLoss (verification), Unavailable (network), Internal, ...: the
      // read failed; the caller logged why.
      return EIO;
  }
}

}  // namespace lazypull
