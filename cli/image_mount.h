// `lazypull mount IMAGE_REF MOUNTPOINT`: an image from a registry served
// lazily by one process.
//
// Per layer, bottom first:
//  - lazily pullable (an eStargz or zstd:chunked layer with a trust anchor:
//    `containerd.io/snapshot/stargz/toc.digest`, and/or the zstd:chunked
//    manifest checksum, new or old prefix): LayerReader over an
//    HttpBlobSource (one speculative tail read; the exact TOC range when the
//    manifest-position annotation says where it is) -> CachedLayer over the
//    shared DiskChunkCache -> LayerFs -> a FUSE mount of its own under
//    <cache-dir>/mounts/<pid>/<n>, each FuseServer on its own thread. A TOC
//    that does not match its anchor fails the whole mount.
//  - otherwise (plain gzip/zstd/tar, or no anchor): pulled, verified (blob
//    digest, diff_id) and unpacked into <cache-dir>/mounts/<pid>/<n> with
//    whiteouts in overlayfs form, and a log line naming the layer and why.
// MOUNTPOINT is a read-only overlayfs of the layer dirs (a single layer, or
// --layer N, is bind-mounted read-only instead).
//
// Prefetch: each lazy layer's prioritized files (before its prefetch
// landmark) are fetched at prefetch priority on mount; --wait-prefetch
// waits for that. Then the rest is fetched at background priority unless
// --no-background-fetch. Progress is in each layer's state file.
//
// The process ends on SIGTERM/SIGINT/SIGHUP (sent by `lazypull unmount`):
// it unmounts the overlay (if still there) and every layer mount, flushes
// the cache and removes its runtime dir.
//
// Thread-safety: ServeImage is called once per process.
#ifndef LAZYPULL_CLI_IMAGE_MOUNT_H_
#define LAZYPULL_CLI_IMAGE_MOUNT_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cli/flags.h"

namespace lazypull::cli {

// The flags of an image mount beyond the --blob ones.
std::vector<FlagSpec> ImageMountFlags();

// Whether users other than the mounter may use an image's layer mounts: as
// root always (as stargz-snapshotter mounts; the kernel still checks each
// file's mode and owner, default_permissions: a container's non-root
// processes read a single-layer image, bind-mounted, as any filesystem, and
// an overlay of several layers is open to them anyway), otherwise with
// `-o allow_other` (needs user_allow_other in /etc/fuse.conf).
bool AllowOthers(const ParsedArgs& args);

// Checks the image-mount flags before daemonizing.
absl::Status CheckImageMountArgs(const ParsedArgs& args);

// Serves args.positionals[0] (IMAGE_REF) at `mountpoint` until signalled.
// `ready` is called once, when the mount is assembled (after the prefetch
// when --wait-prefetch), with notes for the user (fallback layers), or not at
// all if an error prevented the mount (then returned).
absl::Status ServeImage(
    const ParsedArgs& args, const std::string& mountpoint,
    const std::string& pid_file,
    const std::function<void(const std::string& notes)>& ready);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_IMAGE_MOUNT_H_
