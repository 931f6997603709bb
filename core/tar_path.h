#ifndef LAZYPULL_CORE_TAR_PATH_H_
#define LAZYPULL_CORE_TAR_PATH_H_

// The names a layer may hold: one rule for the lazy mount's index and for
// extraction, so that both accept and refuse the same layers. Pure functions,
// thread-safe.

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazypull {

// Normalizes a tar path: clean("/" + name) with the leading "/" stripped; the
// root is "". Fails if the name climbs above the root, holds a NUL byte, a
// component longer than 255 bytes (NAME_MAX), or is longer than 4095 bytes in
// all (PATH_MAX: no such path can be created, and a tree that deep would cost
// a descriptor per level to walk).
absl::StatusOr<std::string> NormalizeTarPath(absl::string_view name);

// Fails if a symlink target holds a NUL byte or is longer than 4095 bytes
// (symlink(2) refuses it; readlink through FUSE could not return it). Targets
// are otherwise kept verbatim: they are never resolved by lazypull.
absl::Status CheckSymlinkTarget(absl::string_view target);

// A name as error messages quote it: its first 300 bytes, "..." if cut.
std::string NameForMessage(absl::string_view name);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_TAR_PATH_H_
