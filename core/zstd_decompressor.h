// zstd frame decompression (libzstd streaming API) for zstd:chunked.
//
// The window is capped (ZSTD_d_windowLogMax = 27, 128 MiB): a frame that
// declares a larger window is refused instead of allocating for it.
//
// Thread-safety: one thread per object.
#ifndef LAZYPULL_CORE_ZSTD_DECOMPRESSOR_H_
#define LAZYPULL_CORE_ZSTD_DECOMPRESSOR_H_

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "core/decompressor.h"

namespace lazypull {

// A StreamDecompressor for concatenated zstd frames (skippable ones skipped).
std::unique_ptr<StreamDecompressor> NewZstdDecompressor();

// The one translation of a libzstd error code into a Status.
absl::Status ZstdError(size_t code, absl::string_view what);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_ZSTD_DECOMPRESSOR_H_
