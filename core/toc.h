// The table of contents (TOC) of an eStargz / zstd:chunked layer: parsing the
// JSON into raw entries (formats.md §1.2 and §2).
//
// This is "what the JSON says", nothing more: names are kept as written, chunk
// entries are not yet bound to their files, and nothing is cross-checked.
// LayerIndex (core/layer_index.h) normalizes and validates. Both writers' TOCs
// are accepted: the stargz reference's (version 1) and containers/storage's
// (version 1 or 2, `endOffset`, `chunkType`, nanosecond/zone modtimes, files
// with only `digest`).
//
// The TOC digest is sha256 of the JSON bytes exactly as stored; the caller
// hashes the bytes it read (never a re-serialization).
//
// Thread-safety: pure functions and value types.
#ifndef LAZYPULL_CORE_TOC_H_
#define LAZYPULL_CORE_TOC_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"

namespace lazypull {

// The names a lazily-pullable layer adds at its root (formats.md §1): the
// eStargz TOC's tar entry and the prefetch landmarks (the files before
// `.prefetch.landmark` are prioritized; `.no.prefetch.landmark` says there
// are none). Readers hide them.
inline constexpr char kTocTarName[] = "stargz.index.json";
inline constexpr char kPrefetchLandmark[] = ".prefetch.landmark";
inline constexpr char kNoPrefetchLandmark[] = ".no.prefetch.landmark";

// Whether xattr `name` is one of overlayfs's private ones
// ("trusted.overlay.*" and "user.overlay.*": redirect, metacopy, origin,
// whiteout, ...) but the opaque marker. A layer's own such xattrs are
// dropped by every reader (the lazy index, and so the FUSE layer and
// `extract`; the tar unpacker, and so `pull`): stacked in an overlay, they
// would steer it (redirect lookups, fake whiteouts). The opaque marker is
// kept and means what it means to overlayfs and to containerd's unpack (the
// directory hides the layers' below it): `pull` honours it too.
bool IsOverlayPrivateXattr(absl::string_view name);
// Whether (name, value) is overlayfs's opaque marker on a directory.
bool IsOverlayOpaqueXattr(absl::string_view name, absl::string_view value);

enum class EntryType : uint8_t {
  kDir,
  kReg,
  kSymlink,
  kHardlink,
  kChar,
  kBlock,
  kFifo,
  kChunk,
};

// "dir", "reg", ... as in the TOC.
absl::string_view EntryTypeName(EntryType t);

struct TocEntry {
  std::string name;  // raw tar path
  EntryType type = EntryType::kReg;
  uint64_t size = 0;
  bool has_modtime = false;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  std::string link_name;
  uint32_t mode = 0;  // permission + setuid/setgid/sticky; type bits dropped
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::string uname;  // "" when the writer omitted it
  std::string gname;
  uint32_t dev_major = 0;
  uint32_t dev_minor = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;  // decoded values
  std::optional<Digest> digest;                             // whole-file digest
  uint64_t offset = 0;                 // compressed offset of the payload
  uint64_t end_offset = 0;             // containers/storage; 0 = absent
  uint64_t inner_offset = 0;           // uncompressed offset inside the member
  uint64_t chunk_offset = 0;           // offset of this chunk in the file
  uint64_t chunk_size = 0;             // 0 = absent (filled in by the index)
  std::optional<Digest> chunk_digest;  // sha256 of the chunk's bytes
  bool zeros = false;                  // chunkType "zeros": no stored data
};

struct Toc {
  int version = 1;
  std::vector<TocEntry> entries;
};

struct TocLimits {
  // More entries than this is refused (a 100,000-file layer has ~100,000).
  uint64_t max_entries = 10'000'000;
  // Largest file size accepted (absurd sizes are refused up front).
  uint64_t max_file_size = uint64_t{1} << 50;
};

// Parses TOC JSON. `json` must be followed in memory by at least
// kTocParsePadding readable bytes (use PaddedTocBuffer). Errors are
// InvalidArgument naming the entry index and key at fault.
absl::StatusOr<Toc> ParseToc(absl::string_view json,
                             const TocLimits& limits = {});

// Bytes of readable slack ParseToc needs after the JSON.
inline constexpr size_t kTocParsePadding = 64;

// A std::string holding `json` with the slack ParseToc needs; convenience for
// callers that do not control their buffer.
std::string PaddedTocBuffer(absl::string_view json);

// The blob offset of the `.prefetch.landmark` entry, found by a scan of the
// TOC's text, without a parse: for starting the prefetch of [0, offset)
// while the TOC is still being parsed and indexed. nullopt when there is
// none or its entry does not read as expected (the parse stays
// authoritative; callers use this as a hint only).
std::optional<uint64_t> ScanPrefetchLandmark(absl::string_view json);

// Parses an RFC 3339 timestamp ("2021-06-01T12:00:00Z", optional fraction,
// optional +hh:mm offset) into Unix seconds and nanoseconds.
bool ParseRfc3339(absl::string_view text, int64_t* sec, uint32_t* nsec);

// Standard base64 decoding (with padding); false on malformed input.
bool Base64Decode(absl::string_view in, std::string* out);
// Standard base64 encoding with padding.
std::string Base64Encode(absl::string_view in);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_TOC_H_
