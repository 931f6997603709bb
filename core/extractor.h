// Verified full extraction of a layer into an overlay-ready directory, the
// way containerd's overlay snapshotter stores a layer.
//
// Every byte written comes from LayerReader::ReadChunk, i.e. is verified
// first. Owners, modes (setuid/setgid/sticky), xattrs, devices, fifos,
// hardlinks, symlinks (kept verbatim, never followed) and times are applied;
// directories get their modes and times last, deepest first. Whiteouts are
// converted to the overlayfs form: `.wh.X` becomes a character device 0:0
// named X (skipped when the layer also has a real X), a directory holding
// `.wh..wh..opq` gets xattr trusted.overlay.opaque=y. Landmarks and the TOC
// are not written.
//
// Safety: paths come from the validated LayerIndex (no `..`, no absolute
// names) and every file is created relative to a directory fd opened with
// O_NOFOLLOW, one component at a time, so nothing is ever written outside
// DIR, even if DIR already holds symlinks.
//
// Thread-safety: ExtractLayer is reentrant; it uses `threads` workers
// internally.
#ifndef LAZYPULL_CORE_EXTRACTOR_H_
#define LAZYPULL_CORE_EXTRACTOR_H_

#include <string>

#include "absl/status/status.h"
#include "core/layer_reader.h"

namespace lazypull {

struct ExtractOptions {
  // Apply owners (lchown). Defaults to true when running as root.
  bool same_owner = true;
  // Worker threads reading and writing file contents.
  int threads = 2;
};

// Extracts the layer into `dir`, which must be empty or not exist yet. On
// failure (a chunk that does not verify, a full disk) `dir` is left empty.
absl::Status ExtractLayer(const LayerReader& reader, const std::string& dir,
                          const ExtractOptions& options = {});

}  // namespace lazypull

#endif  // LAZYPULL_CORE_EXTRACTOR_H_
