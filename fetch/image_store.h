// Where images are read from and written to: a registry (OCI distribution
// API) or an OCI image layout directory, spelled as skopeo spells them.
//
// Locations:
//   "oci:DIR[:TAG]"   an OCI image layout (index.json, oci-layout,
//                     blobs/sha256/...). TAG is matched against the index
//                     entries' "org.opencontainers.image.ref.name"
//                     annotation; without TAG the layout must hold exactly
//                     one entry (reading) / the entry is written untagged
//                     and replaces nothing (writing: index.json gets it
//                     appended). skopeo's rule for colons: DIR ends at the
//                     last ':' (a DIR containing ':' needs an explicit TAG,
//                     or a trailing ':' for none). TAG is made of letters,
//                     digits, '.', '_' and '-' (as containers/image checks).
//   anything else     an image reference, registry[:port]/repo[:tag|@digest]
//                     (fetch/reference.h), optionally prefixed "docker://".
//                     Other transports of skopeo (dir:, docker-archive:,
//                     oci-archive:, containers-storage:, ...) are refused.
// The layout itself: fetch/oci_layout.h (blobs written atomically,
// index.json rewritten atomically).
//
// ImageReader: the root document (manifest or index) the location names,
// child manifests and blobs, every byte checked against its digest (a blob
// stream's last Read fails with DataLoss on a mismatch, as BlobReader).
// ImageWriter: blobs first, then manifests (children before the index),
// then Tag() names the root; a blob the destination already has is skipped
// (HasBlob), and a registry destination on the same registry as the source
// may mount it across repositories instead of uploading (MountBlob).
//
// Thread-safety: one thread per object; different objects are independent.
#ifndef LAZYPULL_FETCH_IMAGE_STORE_H_
#define LAZYPULL_FETCH_IMAGE_STORE_H_

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/tar_reader.h"
#include "fetch/manifest.h"
#include "fetch/registry.h"

namespace lazypull {

struct ImageLocation {
  enum class Kind { kRegistry, kOciLayout };
  Kind kind = Kind::kRegistry;
  // kRegistry: the reference as given (without "docker://").
  std::string reference;
  // kOciLayout: the directory and the tag ("" = none).
  std::string dir;
  std::string tag;

  static absl::StatusOr<ImageLocation> Parse(absl::string_view text);
  // As it would be written on a command line; parses back to the same
  // location: "oci:DIR[:TAG]" or "docker://REF".
  std::string String() const;
};

class ImageReader {
 public:
  virtual ~ImageReader() = default;
  // The manifest or index the location names, verified (by digest, or for a
  // registry tag, against Docker-Content-Digest when sent).
  virtual absl::StatusOr<FetchedManifest> Root() = 0;
  // A manifest listed by an index, verified against `d`.
  virtual absl::StatusOr<FetchedManifest> Manifest(const Descriptor& d) = 0;
  // A whole small blob (a config), verified.
  virtual absl::StatusOr<std::string> Blob(const Descriptor& d) = 0;
  // A blob as a stream, verified at its end.
  virtual absl::StatusOr<std::unique_ptr<ByteStream>> OpenBlob(
      const Descriptor& d) = 0;
  // For messages: "oci:/path:tag" or "registry/repo:tag".
  virtual std::string Describe() const = 0;
};

class ImageWriter {
 public:
  virtual ~ImageWriter() = default;
  // Whether the destination already holds blob `d` (digest and size).
  virtual absl::StatusOr<bool> HasBlob(const Descriptor& d) = 0;
  // Stores the blob held by the file at `path` (exactly d.size bytes whose
  // sha256 is d.digest), streamed, never held in memory. An OCI layout
  // checks both as it copies; a registry destination checks the size before
  // sending and the registry verifies the digest. Either way a mismatch is
  // InvalidArgument and nothing is stored.
  virtual absl::Status PutBlobFile(const Descriptor& d,
                                   const std::string& path) = 0;
  // Stores a small blob held in memory (configs).
  virtual absl::Status PutBlob(const Descriptor& d,
                               absl::string_view bytes) = 0;
  // Registry destinations: asks the registry to mount `d` from repository
  // `from_repo` (e.g. "team/app") of the same registry. Returns true when
  // mounted, false when the registry declined or the credentials do not
  // reach `from_repo` (then upload it: the upload session a declined mount
  // opened is used). OCI layouts: always false.
  virtual absl::StatusOr<bool> MountBlob(const Descriptor& d,
                                         absl::string_view from_repo) = 0;
  // Stores a manifest or index by digest (d.media_type is its content type).
  virtual absl::Status PutManifest(const Descriptor& d,
                                   absl::string_view bytes) = 0;
  // Names the root document: the registry tag of the location (PUT of the
  // manifest by tag; when the location names a digest, `root` must have it
  // and only a tag given too is PUT) or the OCI layout's index.json entry
  // with the location's tag (replacing an entry of the same name; stores
  // the root's bytes first if they are not there). A root without a media
  // type gets the one its bytes state.
  virtual absl::Status Tag(const Descriptor& root, absl::string_view bytes) = 0;
  virtual std::string Describe() const = 0;
};

// `registry` configures registry locations (ignored for OCI layouts); it
// must outlive the returned object.
absl::StatusOr<std::unique_ptr<ImageReader>> OpenImageReader(
    const ImageLocation& location, const RegistryOptions& registry);
absl::StatusOr<std::unique_ptr<ImageWriter>> OpenImageWriter(
    const ImageLocation& location, const RegistryOptions& registry);

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_IMAGE_STORE_H_
