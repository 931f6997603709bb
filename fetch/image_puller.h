// PullImage: the conventional full pull of an image into a root filesystem
// directory, as strong as containerd's pull + unpack.
//
// Pipeline, per layer (up to `parallel_layers` layers at once):
//   registry blob (streamed, sha256 + size checked at its end)
//     -> gzip / zstd / plain tar, told apart by magic bytes (ISA-L inflate
//        and libzstd through core's StreamDecompressor, concatenated members
//        and frames included), hashing the uncompressed stream (DiffID)
//     -> streaming tar parser (core/tar_reader.h)
//     -> UnpackTar into a staging directory of its own (core/tar_unpacker.h);
//        a layer with a lazy-pull anchor (eStargz, zstd:chunked) leaves out
//        its TOC entry and landmark files, as a lazy mount of it does
//     -> the blob's digest and the config's diff_id are checked; a layer that
//        fails either is discarded with everything it wrote.
// Layers are then applied strictly in order (fetch/rootfs_builder.h:
// whiteouts, opaque directories, merge by rename) onto a root filesystem
// built beside DIR, while later layers are still downloading. Only when
// every layer is in is that tree renamed to DIR: a failed pull leaves DIR as
// it was (absent or empty) and removes its work directory.
//
// The work directory is `<parent of DIR>/.<name of DIR>.lazypull-pull.<pid>`
// (same filesystem, so every move is a rename).
//
// Thread-safety: PullImage is reentrant for distinct DIRs; it runs
// `parallel_layers` worker threads of its own.
#ifndef LAZYPULL_FETCH_IMAGE_PULLER_H_
#define LAZYPULL_FETCH_IMAGE_PULLER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/digest.h"
#include "core/tar_unpacker.h"
#include "fetch/registry.h"

namespace lazypull {

struct PullOptions {
  // Layers downloaded and unpacked at once (default 3, as containerd).
  int parallel_layers = 3;
  // Apply owners from the layers (callers default it to "running as root").
  bool same_owner = true;
};

struct PullResult {
  std::string reference;
  std::optional<Digest> index_digest;
  Digest manifest_digest;
  size_t layers = 0;
  uint64_t compressed_bytes = 0;    // blob bytes downloaded and verified
  uint64_t uncompressed_bytes = 0;  // tar bytes unpacked
  uint64_t entries = 0;             // tar entries
  absl::Duration elapsed;
};

// Pulls client->reference() into `dir`, which must not exist or be an empty
// directory. Errors name the layer (index and digest) and what failed.
absl::StatusOr<PullResult> PullImage(RegistryClient* client,
                                     const std::string& dir,
                                     const PullOptions& options = {});

// One layer of a full pull on its own: downloads blob `d`, checks its digest
// and `diff_id`, and unpacks it into `dir` (created; must not exist).
// Whiteouts, opaque directories and hardlinks to lower layers are reported,
// not applied. On error what was written stays: the caller removes `dir`.
absl::StatusOr<UnpackedLayer> PullLayer(RegistryClient* client,
                                        const Descriptor& d,
                                        const Digest& diff_id,
                                        const std::string& dir,
                                        bool same_owner);

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_IMAGE_PULLER_H_
