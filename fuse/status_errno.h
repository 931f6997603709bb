// Status -> errno, at the FUSE edge only: the one place a Status becomes the
// errno a FUSE reply carries.
//
// Thread-safety: pure function.
#ifndef LAZYPULL_FUSE_STATUS_ERRNO_H_
#define LAZYPULL_FUSE_STATUS_ERRNO_H_

#include "absl/status/status.h"

namespace lazypull {

// 0 for OK; EIO for any failure to produce a file's data (it failed
// verification or could not be fetched, whatever the reason). Never
// EACCES, ENOENT, ENOMEM, ... for an open file whose bytes a registry
// answered 403, 404 or 429 for: the caller logs why the read failed.
int StatusToErrno(const absl::Status& status);

}  // namespace lazypull

#endif  // LAZYPULL_FUSE_STATUS_ERRNO_H_
