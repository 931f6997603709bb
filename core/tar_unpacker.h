// Streaming unpacking of one layer's tar stream into an empty directory, as
// it arrives (no seeking, no temporary copy): the "untar" of a full pull.
//
// Entries are created as they come: directories, regular files (payload
// streamed in), symlinks (kept verbatim, never followed), hardlinks, char
// and block devices, fifos; then owners (when `same_owner`), xattrs, modes
// (setuid/setgid/sticky kept) and times. Directory modes and times are set
// last, deepest first, so that creating their children does not undo them.
// A later entry with the same name replaces the earlier one (a directory
// over a directory merges), as tar extraction does.
//
// Whiteouts are not written: they are reported, for the caller to apply to
// the layers below (see fetch/rootfs_builder.h):
//  - `D/.wh.X` -> whiteouts "D/X" (X is deleted from the lower layers);
//  - `D/.wh..wh..opq` -> opaque_dirs "D" (D's lower contents are hidden);
//  - other `.wh..wh.*` names (AUFS bookkeeping) are skipped.
// A hardlink whose target is not in this layer is reported too
// (lower_hardlinks), to be made once the layers below are in place.
//
// Safety: names are normalized ("./a", "/a", "a/" -> "a") and a ".."
// component is refused (InvalidArgument), for names and hardlink targets;
// every parent directory is opened component by component with O_NOFOLLOW
// (core/node_writer.h), so an entry that would be written through a symlink
// (even one the same layer planted) is refused and nothing is ever written
// outside `dir`.
//
// Thread-safety: UnpackTar is reentrant; one call per thread and directory.
#ifndef LAZYPULL_CORE_TAR_UNPACKER_H_
#define LAZYPULL_CORE_TAR_UNPACKER_H_

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/tar_reader.h"

namespace lazypull {

struct TarUnpackOptions {
  // Apply owners (lchown). Callers default it to "running as root".
  bool same_owner = true;
  // Leave out the lazy-pull metadata of an eStargz or zstd:chunked layer:
  // the regular files `stargz.index.json` (the TOC's tar entry),
  // `.prefetch.landmark` and `.no.prefetch.landmark` at the layer's root,
  // which a lazy mount of the layer (and `extract`) does not show either.
  bool skip_lazy_metadata = false;
};

struct UnpackedLayer {
  // Paths relative to the layer root, '/'-separated, no leading "./".
  std::vector<std::string> whiteouts;
  std::vector<std::string> opaque_dirs;
  // (path, target) of hardlinks to files of lower layers.
  std::vector<std::pair<std::string, std::string>> lower_hardlinks;
  // Directories that had an entry of their own ("" for the root), as
  // opposed to parents created implicitly: only these carry attributes
  // meant to replace those of the layers below.
  std::set<std::string> explicit_dirs;
  uint64_t entries = 0;
  uint64_t file_bytes = 0;  // regular file payload written
};

// Reads every entry from `tar` and creates it under `dir` (an existing,
// empty directory). On error, what was written so far stays: the caller
// removes `dir`.
absl::StatusOr<UnpackedLayer> UnpackTar(TarReader* tar, const std::string& dir,
                                        const TarUnpackOptions& options = {});

}  // namespace lazypull

#endif  // LAZYPULL_CORE_TAR_UNPACKER_H_
