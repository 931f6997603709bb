// Status -> errno, at the FUSE edge only: the one place a Status becomes the
// errno a FUSE reply carries.
//
// Thread-safety: pure function.
#ifndef LAZYPULL_FUSE_STATUS_ERRNO_H_
#define LAZYPULL_FUSE_STATUS_ERRNO_H_

#include "absl/status/status.h"

namespace lazypull {

// 0 for OK; EIO for data that failed verification or could not be fetched.
int StatusToErrno(const absl::Status& status);

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_STATUS_ERRNO_H_
