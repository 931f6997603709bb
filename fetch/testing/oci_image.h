// Building OCI image layouts in tests (blobs/sha256/*, index.json,
// oci-layout) from tar archives the test makes, and pushing them to a
// registry with skopeo (`skopeo copy oci:DIR:TAG docker://HOST/REPO:TAG`),
// since lazypull has no `push` yet.
//
// Layers are compressed as asked (gzip, zstd or none); the config lists
// their diff_ids (sha256 of the uncompressed tar), the manifest their
// descriptors. Indexes of several manifests carry each one's platform.
//
// Thread-safety: one thread per object.
#ifndef LAZYPULL_FETCH_TESTING_OCI_IMAGE_H_
#define LAZYPULL_FETCH_TESTING_OCI_IMAGE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/digest.h"

namespace lazypull::testing {

struct TestDescriptor {
  std::string media_type;
  Digest digest;
  int64_t size = 0;
  std::string platform;  // "os/arch[/variant]" for index entries
  std::string Json() const;
};

enum class TestCompression { kGzip, kZstd, kNone };

struct TestImage {
  TestDescriptor manifest;
  TestDescriptor config;
  std::vector<TestDescriptor> layers;
};

class OciLayout {
 public:
  // Creates `dir` with blobs/sha256 and oci-layout.
  static absl::StatusOr<OciLayout> Create(const std::string& dir);

  // Stores bytes as a blob.
  absl::StatusOr<TestDescriptor> AddBlob(const std::string& media_type,
                                         const std::string& bytes);
  // An image of these layers (uncompressed tars, lowest first).
  absl::StatusOr<TestImage> AddImage(
      const std::vector<std::string>& layer_tars,
      const std::string& platform = "linux/amd64",
      TestCompression compression = TestCompression::kGzip);
  // An OCI image index of these manifests (their `platform` set).
  absl::StatusOr<TestDescriptor> AddIndex(
      const std::vector<TestDescriptor>& manifests);
  // Names `d` as `tag` in index.json (rewritten each time).
  absl::Status Tag(const std::string& tag, const TestDescriptor& d);

  const std::string& dir() const { return dir_; }
  std::string BlobPath(const Digest& d) const;

 private:
  explicit OciLayout(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
  std::vector<std::pair<std::string, TestDescriptor>> tags_;
};

// Gzip / zstd of a whole buffer (one member / frame).
std::string GzipForTest(const std::string& data);
std::string ZstdForTest(const std::string& data);

// skopeo copy [--all] --dest-tls-verify=false [--dest-creds CREDS]
//   oci:<layout>:<tag> docker://<host>/<repo>:<tag>
absl::Status PushWithSkopeo(const OciLayout& layout, const std::string& tag,
                            const std::string& host, const std::string& repo,
                            bool all = false, const std::string& creds = "");

}  // namespace lazypull::testing

#endif  // LAZYPULL_FETCH_TESTING_OCI_IMAGE_H_
