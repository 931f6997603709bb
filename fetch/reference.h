// ImageReference: `[registry[:port]/]repository[:tag][@digest]`, parsed the
// way Docker and containerd read image names.
//
// - The first component is a registry host when it contains '.' or ':' or is
//   "localhost"; otherwise the image is on Docker Hub ("docker.io").
// - Docker Hub names are normalized: "alpine" -> docker.io/library/alpine,
//   "user/app" -> docker.io/user/app; "index.docker.io" and
//   "registry-1.docker.io" are spelled "docker.io". The API itself is served
//   by registry-1.docker.io (ApiHost()).
// - Neither tag nor digest means tag "latest". With both, the digest decides
//   what is pulled (the tag is kept for display).
// - Repository components are lower-case alphanumerics joined by '.', '_',
//   '__' or runs of '-'; a tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}; a digest
//   is sha256:<64 hex> (the only algorithm lazypull verifies).
//
// Thread-safety: a value type.
#ifndef LAZYPULL_FETCH_REFERENCE_H_
#define LAZYPULL_FETCH_REFERENCE_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"

namespace lazypull {

inline constexpr char kDockerHubName[] = "docker.io";
inline constexpr char kDockerHubApiHost[] = "registry-1.docker.io";

struct ImageReference {
  std::string registry;    // "docker.io", "127.0.0.1:5000", "ghcr.io"
  std::string repository;  // "library/alpine"
  std::string tag;         // "latest" if none was given (even with a digest)
  bool tag_given = false;  // the text named a tag
  std::optional<Digest> digest;

  // InvalidArgument naming the offending part.
  static absl::StatusOr<ImageReference> Parse(absl::string_view text);

  // The host[:port] whose /v2/ API serves this image.
  std::string ApiHost() const;
  // What the manifest endpoint takes: the digest if any, else the tag.
  std::string ManifestSelector() const;
  // "registry/repository[:tag][@digest]".
  std::string String() const;
};

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_REFERENCE_H_
