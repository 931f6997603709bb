#include "core/errno_status.h"

#include <errno.h>
#include <string.h>

#include "absl/strings/str_cat.h"

namespace lazypull {

absl::Status ErrnoToStatus(int err, absl::string_view what) {
  char buf[256];
  // GNU strerror_r returns the message pointer.
  const char* text = strerror_r(err, buf, sizeof(buf));
  std::string msg = absl::StrCat(what, ": ", text, " (errno ", err, ")");
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EEXIST:
    case ENOTEMPTY:
      return absl::AlreadyExistsError(msg);
    case EPERM:
    case EACCES:
    case EROFS:
      return absl::PermissionDeniedError(msg);
    case EINVAL:
    case ENAMETOOLONG:
    case ELOOP:
      return absl::InvalidArgumentError(msg);
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    case EAGAIN:
    case EINTR:
    case EBUSY:
      return absl::UnavailableError(msg);
    case ETIMEDOUT:
      return absl::DeadlineExceededError(msg);
    case EIO:
      return absl::DataLossError(msg);
    case ENOTSUP:
    case ENOSYS:
      return absl::UnimplementedError(msg);
    default:
      return absl::UnknownError(msg);
  }
}

}  // namespace lazypull
