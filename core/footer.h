// Footers of lazily-pullable layer blobs (formats.md §1.1 and §2).
//
// One tail read of the last kFooterTailSize bytes covers every dialect:
//   eStargz         51-byte empty gzip member, extra subfield "SG"
//   legacy stargz   47-byte empty gzip member, bare 22-byte extra field
//   zstd:chunked    8-byte skippable-frame header + 40-byte payload
//   ("GnUlInUx") containers/storage zstd:chunked: 8 + 64 bytes ("GNUlInUx"),
//   and its v1.47-v1.49 form: 8 + 56 bytes, "GnUlInUx" then 16 zero bytes
// The external-TOC eStargz footer (46 bytes) is recognised and refused with
// an Unimplemented error. ParseFooter is pure: it never trusts an offset or a
// length without checking it against the blob size and the limits given.
//
// Thread-safety: pure functions and value types.
#ifndef LAZYPULL_CORE_FOOTER_H_
#define LAZYPULL_CORE_FOOTER_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lazypull {

inline constexpr size_t kFooterTailSize = 72;
inline constexpr size_t kEstargzFooterSize = 51;
inline constexpr size_t kLegacyFooterSize = 47;
inline constexpr size_t kZstdFooterSize = 48;           // 8 + 40
inline constexpr size_t kZstdStorageFooterSize = 72;    // 8 + 64
inline constexpr size_t kZstdStorage56FooterSize = 64;  // 8 + 56

enum class LayerFormat : uint8_t {
  kEstargz,             // gzip, 51-byte footer
  kStargzLegacy,        // gzip, 47-byte footer
  kZstdChunked,         // zstd, 40-byte footer payload (stargz reference)
  kZstdChunkedStorage,  // zstd, 64-byte footer payload (containers/storage)
};

// "estargz", "stargz-legacy" or "zstd:chunked" (both zstd dialects).
absl::string_view LayerFormatName(LayerFormat f);
// True for the two zstd dialects.
inline bool IsZstd(LayerFormat f) {
  return f == LayerFormat::kZstdChunked ||
         f == LayerFormat::kZstdChunkedStorage;
}

struct Footer {
  LayerFormat format = LayerFormat::kEstargz;
  // Bytes the footer occupies at the end of the blob (for zstd including the
  // skippable-frame header): 51, 47, 48, 72 or 64.
  uint64_t footer_size = 0;
  // gzip: offset of the TOC's gzip member. zstd: offset of the compressed TOC
  // bytes (just after their skippable-frame header).
  uint64_t toc_offset = 0;
  // Compressed TOC length. gzip: blob_size - footer_size - toc_offset.
  uint64_t toc_compressed_size = 0;
  // zstd: length of the TOC JSON. gzip: 0 (not recorded by the footer).
  uint64_t toc_uncompressed_size = 0;
};

struct FooterLimits {
  // A TOC (compressed or not) larger than this is refused.
  uint64_t max_toc_size = uint64_t{512} << 20;
};

// Parses the footer from `tail`, the last min(blob_size, kFooterTailSize)
// bytes of a blob of `blob_size` bytes. Errors: InvalidArgument (no valid
// footer, offsets past the end, sizes over the limit), Unimplemented
// (external TOC). A tail with no footer of any dialect at all is marked
// (IsNoFooter): the blob is no lazily-pullable layer (or is truncated), as
// opposed to one whose footer is there but wrong.
absl::StatusOr<Footer> ParseFooter(absl::string_view tail, uint64_t blob_size,
                                   const FooterLimits& limits = {});

// Whether `s` (or a Restated() form of it) is ParseFooter's "no footer".
bool IsNoFooter(const absl::Status& s);
// Whether `s` (or a Restated() form of it) is ParseFooter's Unimplemented
// for an external-TOC footer (the blob itself is a valid gzip tar stream).
bool IsExternalToc(const absl::Status& s);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_FOOTER_H_
