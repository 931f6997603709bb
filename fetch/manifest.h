// OCI / Docker image manifests, indexes and configs: parsing, media types
// and platform selection.
//
// Parsing checks what a puller relies on: digests are sha256 and well
// formed, sizes are non-negative, the media type (when the document states
// one) is one this file knows, an index lists manifests and a manifest lists
// a config and layers. Unknown fields are ignored, as the image spec asks.
//
// Platform matching follows containerd's: os and architecture must be equal
// after normalization (x86_64 -> amd64, aarch64 -> arm64); a variant asked
// for must be equal (arm64's default variant is v8, arm's v7, amd64's v1);
// with none asked for, the manifest without a variant (or with the default
// one) wins over any other.
//
// Thread-safety: pure functions and value types.
#ifndef LAZYPULL_FETCH_MANIFEST_H_
#define LAZYPULL_FETCH_MANIFEST_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"

namespace lazypull {

inline constexpr char kOciManifestType[] =
    "application/vnd.oci.image.manifest.v1+json";
inline constexpr char kOciIndexType[] =
    "application/vnd.oci.image.index.v1+json";
inline constexpr char kDockerManifestType[] =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr char kDockerManifestListType[] =
    "application/vnd.docker.distribution.manifest.list.v2+json";
// The Accept header of a manifest request: all four.
std::string ManifestAcceptHeader();

bool IsIndexMediaType(absl::string_view t);
bool IsManifestMediaType(absl::string_view t);

struct Platform {
  std::string os;
  std::string architecture;
  std::string variant;

  // "os/arch[/variant]"; arch and os are normalized.
  static absl::StatusOr<Platform> Parse(absl::string_view text);
  // The machine this runs on (linux/amd64 here).
  static Platform Host();
  // Linux on uname's machine name: "x86_64" -> linux/amd64, "aarch64" ->
  // linux/arm64/v8, "armv7l" -> linux/arm/v7, "armv6l" -> linux/arm/v6.
  static Platform FromMachine(absl::string_view machine);
  std::string String() const;
  // Whether an index entry for `candidate` serves this platform.
  bool Matches(const Platform& candidate) const;
};

struct Descriptor {
  std::string media_type;
  Digest digest;
  int64_t size = 0;
  std::optional<Platform> platform;
  std::map<std::string, std::string> annotations;
  // Where else the blob may be fetched (non-distributable / foreign layers;
  // the first 8, as given).
  std::vector<std::string> urls;
};

struct ImageIndex {
  std::string media_type;  // as stated (may be empty)
  std::vector<Descriptor> manifests;
};

struct ImageManifest {
  std::string media_type;  // as stated (may be empty)
  Descriptor config;
  std::vector<Descriptor> layers;
};

struct ImageConfig {
  Platform platform;
  std::vector<Digest> diff_ids;  // rootfs.diff_ids, one per layer
  // How to run it (config.Env, config.WorkingDir, config.User); empty when
  // the config says nothing.
  std::vector<std::string> env;  // "NAME=value"
  std::string working_dir;
  std::string user;  // "user", "uid", "user:group", "uid:gid"
};

// What a manifest endpoint returned, told apart by its content: an object
// with "manifests" is an index, one with "layers" a manifest.
enum class ManifestKind { kIndex, kManifest };
absl::StatusOr<ManifestKind> SniffManifestKind(absl::string_view json);

absl::StatusOr<ImageIndex> ParseImageIndex(absl::string_view json);
absl::StatusOr<ImageManifest> ParseImageManifest(absl::string_view json);
absl::StatusOr<ImageConfig> ParseImageConfig(absl::string_view json);

// The index entry for `want`: NotFound listing the platforms on offer.
// `platform` is optional in an index entry (OCI image-spec): with no entry
// for `want`, the first entry without one is returned (single-manifest
// indexes of OCI layouts and artifact tools have none); its platform is
// then unknown until its config says it (CheckConfigPlatform).
absl::StatusOr<Descriptor> SelectPlatform(const ImageIndex& index,
                                          const Platform& want);

// For a manifest chosen without a platform: NotFound if its config names
// an os/architecture that `want` does not match (a config that names none
// passes).
absl::Status CheckConfigPlatform(const ImageConfig& config,
                                 const Platform& want);

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_MANIFEST_H_
