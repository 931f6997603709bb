// ImageConverter: rewrites an image's layers as eStargz or zstd:chunked and
// writes the result to another location (registry or OCI layout), as
// `nerdctl image convert --estargz` does. Used by `push`, `image convert` and
// `optimize`.
//
// For each manifest converted: every layer blob (gzip, zstd or uncompressed
// tar, told apart by its first bytes, not by its media type; eStargz /
// zstd:chunked inputs too, their TOC and landmarks dropped and rebuilt) is
// decompressed into a temporary file and converted with core/layer_writer.h;
// its descriptor gets the layer media type and the annotations
// LayerWriteResult lists (toc.digest, uncompressed size, ...) over the old
// descriptor's (whose stale eStargz / zstd:chunked annotations are dropped;
// "urls" and "data" too), every other field kept. The config's
// rootfs.diff_ids are rewritten in place (every other byte of the config
// kept as it was), and the manifest keeps its own fields (annotations,
// subject, ...). An index keeps every platform (or only the one asked for)
// with each entry's platform and annotations; a BuildKit attestation
// entry's "vnd.docker.reference.digest", and an OCI 1.1 referrer's
// `subject` naming an entry of the index, follow the manifest they describe;
// Podman's zstd-instance mark on an entry follows its converted layers.
//
// Media types: eStargz layers are application/vnd.oci.image.layer.v1.tar+gzip
// in an OCI manifest and application/vnd.docker.image.rootfs.diff.tar.gzip in
// a Docker schema 2 manifest (whose types are kept, as the stargz
// reference's converter does). zstd:chunked layers are
// application/vnd.oci.image.layer.v1.tar+zstd, which Docker's schema has no
// name for: with zstd:chunked, Docker manifests, configs and manifest lists
// become their OCI equivalents (as `nerdctl image convert --oci` does).
//
// Non-layer blobs (configs that need no change) and layers whose media type
// is not a tar (attestations, artifacts) are copied unchanged;
// non-distributable ("foreign") layers are left where their URLs say, as
// skopeo and containerd do. Blobs the destination has (HasBlob) are not sent
// again; with `mount_from_repository`, copied blobs are first offered to the
// registry for a cross-repository mount. Every blob read is verified (the
// reader's contract); a layer that fails to convert fails the whole
// conversion naming the manifest and layer, and nothing is tagged at the
// destination (blobs already written may stay).
//
// Thread-safety: ConvertImage may run concurrently for unrelated locations.
#ifndef LAZYPULL_FETCH_IMAGE_CONVERTER_H_
#define LAZYPULL_FETCH_IMAGE_CONVERTER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/digest.h"
#include "core/layer_writer.h"
#include "fetch/image_store.h"
#include "fetch/manifest.h"

namespace lazypull {

struct ImageConvertOptions {
  // Format, chunk size, level and threads of every converted layer.
  // `layer.prioritized_files` is ignored: see prioritized_files below.
  LayerWriterOptions layer;
  // nullopt: keep every platform of an index; otherwise keep only this one
  // (a single manifest is kept whatever its platform).
  std::optional<Platform> only_platform;
  // Optional: the prioritized files (access order) of layer `layer_index`
  // (0 = bottom) of the manifest for `platform`; an empty list means none.
  std::function<std::vector<std::string>(const Platform& platform,
                                         size_t layer_index)>
      prioritized_files;
  // Scratch space for converted blobs (default: $TMPDIR or /tmp).
  std::string temp_dir;
  // Progress lines ("layer 2/5 sha256:... -> sha256:... (12.3 MB)"), if set.
  std::function<void(const std::string&)> progress;
  // Registry to registry on the same registry host: the source repository
  // ("library/alpine"), from which unchanged blobs are mounted rather than
  // uploaded. Empty: no mounts.
  std::string mount_from_repository;
};

struct ConvertedLayer {
  // False for a layer copied or left unchanged (to == from, no TOC).
  bool converted = false;
  Descriptor from;
  Descriptor to;
  Digest toc_digest;
  std::vector<std::string> missing_prioritized;
};

struct ConvertedManifest {
  Platform platform;
  Descriptor from;
  Descriptor to;
  std::vector<ConvertedLayer> layers;
};

struct ImageConvertReport {
  Descriptor root;  // what the destination was tagged with
  std::vector<ConvertedManifest> manifests;
  uint64_t blobs_uploaded = 0;
  uint64_t blobs_skipped = 0;  // already there or mounted
};

absl::StatusOr<ImageConvertReport> ConvertImage(
    ImageReader* source, ImageWriter* destination,
    const ImageConvertOptions& options);

// A root filesystem directory seen as a one-layer image, for `push DIR`: an
// OCI manifest whose one layer is the uncompressed tar core/dir_tar.h makes
// of the directory (written to a temporary file when the reader is opened),
// and a config of the platform, an empty "config": {}, rootfs.diff_ids and
// one history entry ("created_by": "lazypull push"; no time, so pushing the
// same tree twice gives the same image).
struct RootfsImageOptions {
  Platform platform = Platform::Host();
  std::string temp_dir;  // default: $TMPDIR or /tmp
  // Entries skipped (sockets), if set.
  std::function<void(const std::string&)> warn;
};
absl::StatusOr<std::unique_ptr<ImageReader>> OpenRootfsImageReader(
    const std::string& dir, const RootfsImageOptions& options = {});

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_IMAGE_CONVERTER_H_
