// gzip member inflation with ISA-L (igzip), the fast path for eStargz.
//
// Thread-safety: one thread per object.
#ifndef LAZYPULL_CORE_ISAL_INFLATER_H_
#define LAZYPULL_CORE_ISAL_INFLATER_H_

#include <memory>

#include "absl/status/status.h"
#include "core/decompressor.h"

namespace lazypull {

// A StreamDecompressor for concatenated gzip members.
std::unique_ptr<StreamDecompressor> NewIsalInflater();

// The one translation of an ISA-L inflate return code into a Status.
absl::Status IsalInflateError(int code, absl::string_view what);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_ISAL_INFLATER_H_
