#include "fetch/image_store.h"

#include <simdjson.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"
#include "fetch/oci_layout.h"
#include "fetch/reference.h"

namespace lazypull {
namespace {

// Transports of containers/image that lazypull does not read or write.
constexpr const char* kOtherTransports[] = {
    "dir",
    "docker-archive",
    "oci-archive",
    "docker-daemon",
    "containers-storage",
    "sif",
    "tarball",
    "ostree",
    "docker"};  // "docker:" without "//"

bool ValidLayoutTag(absl::string_view tag) {
  for (char c : tag) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

// The media type a manifest or index states, else the OCI one of its kind.
absl::StatusOr<std::string> MediaTypeOf(absl::string_view bytes) {
  ASSIGN_OR_RETURN(ManifestKind kind, SniffManifestKind(bytes));
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  std::string_view mt;
  if (parser.parse(bytes.data(), bytes.size()).get(root) == simdjson::SUCCESS &&
      root["mediaType"].get(mt) == simdjson::SUCCESS && !mt.empty()) {
    return std::string(mt);
  }
  return std::string(kind == ManifestKind::kIndex ? kOciIndexType
                                                  : kOciManifestType);
}

absl::Status CheckBytes(const Descriptor& d, absl::string_view bytes,
                        absl::string_view what) {
  if (bytes.size() != static_cast<uint64_t>(d.size) ||
      Sha256::Of(bytes) != d.digest) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", d.digest.ToString(), " (", d.size, " bytes) has ",
        bytes.size(), " bytes hashing to ", Sha256::Of(bytes).ToString()));
  }
  return absl::OkStatus();
}

absl::StatusOr<FetchedManifest> ToFetched(const Descriptor& d,
                                          std::string bytes) {
  FetchedManifest m;
  m.digest = d.digest;
  ASSIGN_OR_RETURN(m.kind, SniffManifestKind(bytes));
  if (d.media_type.empty()) {
    ASSIGN_OR_RETURN(m.content_type, MediaTypeOf(bytes));
  } else {
    m.content_type = d.media_type;
  }
  m.bytes = std::move(bytes);
  return m;
}

// --- Registry -------------------------------------------------------------

class RegistryImageReader : public ImageReader {
 public:
  explicit RegistryImageReader(std::unique_ptr<RegistryClient> c)
      : c_(std::move(c)) {}

  absl::StatusOr<FetchedManifest> Root() override {
    return c_->FetchManifest(c_->reference().ManifestSelector());
  }

  absl::StatusOr<FetchedManifest> Manifest(const Descriptor& d) override {
    ASSIGN_OR_RETURN(FetchedManifest m, c_->FetchManifest(d.digest.ToString()));
    if (m.bytes.size() != static_cast<uint64_t>(d.size)) {
      return absl::DataLossError(absl::StrCat(
          "manifest ", d.digest.ToString(), " from ", Describe(), " has ",
          m.bytes.size(), " bytes; its descriptor says ", d.size));
    }
    return m;
  }

  absl::StatusOr<std::string> Blob(const Descriptor& d) override {
    return c_->FetchBlob(d);
  }

  absl::StatusOr<std::unique_ptr<ByteStream>> OpenBlob(
      const Descriptor& d) override {
    ASSIGN_OR_RETURN(std::unique_ptr<BlobReader> r, c_->OpenBlob(d));
    return std::unique_ptr<ByteStream>(std::move(r));
  }

  std::string Describe() const override { return c_->reference().String(); }

 private:
  std::unique_ptr<RegistryClient> c_;
};

class RegistryImageWriter : public ImageWriter {
 public:
  explicit RegistryImageWriter(std::unique_ptr<RegistryClient> c)
      : c_(std::move(c)) {}

  absl::StatusOr<bool> HasBlob(const Descriptor& d) override {
    return c_->HasBlob(d);
  }
  absl::Status PutBlobFile(const Descriptor& d,
                           const std::string& path) override {
    return c_->PushBlobFile(d, path);
  }
  absl::Status PutBlob(const Descriptor& d, absl::string_view bytes) override {
    return c_->PushBlob(d, bytes);
  }
  absl::StatusOr<bool> MountBlob(const Descriptor& d,
                                 absl::string_view from_repo) override {
    return c_->MountBlob(d, from_repo);
  }

  absl::Status PutManifest(const Descriptor& d,
                           absl::string_view bytes) override {
    RETURN_IF_ERROR(CheckBytes(d, bytes, "manifest"));
    ASSIGN_OR_RETURN(std::string mt, TypeFor(d, bytes));
    return c_->PushManifest(d.digest.ToString(), mt, bytes).status();
  }

  absl::Status Tag(const Descriptor& root, absl::string_view bytes) override {
    RETURN_IF_ERROR(CheckBytes(root, bytes, "manifest"));
    const ImageReference& ref = c_->reference();
    if (ref.digest) {
      if (*ref.digest != root.digest) {
        return absl::FailedPreconditionError(
            absl::StrCat("the destination ", ref.String(), " names digest ",
                         ref.digest->ToString(), " but the image written is ",
                         root.digest.ToString()));
      }
      if (!ref.tag_given) return absl::OkStatus();  // stored by digest
    }
    ASSIGN_OR_RETURN(std::string mt, TypeFor(root, bytes));
    return c_->PushManifest(ref.tag, mt, bytes).status();
  }

  std::string Describe() const override { return c_->reference().String(); }

 private:
  static absl::StatusOr<std::string> TypeFor(const Descriptor& d,
                                             absl::string_view bytes) {
    if (!d.media_type.empty()) return d.media_type;
    return MediaTypeOf(bytes);
  }

  std::unique_ptr<RegistryClient> c_;
};

// --- OCI layout -----------------------------------------------------------

class LayoutImageReader : public ImageReader {
 public:
  LayoutImageReader(OciImageLayout layout, ImageLocation loc,
                    size_t max_manifest_size)
      : layout_(std::move(layout)),
        loc_(std::move(loc)),
        max_(max_manifest_size) {}

  absl::StatusOr<FetchedManifest> Root() override {
    ASSIGN_OR_RETURN(Descriptor d, layout_.Find(loc_.tag));
    return Manifest(d);
  }

  absl::StatusOr<FetchedManifest> Manifest(const Descriptor& d) override {
    ASSIGN_OR_RETURN(std::string bytes, layout_.ReadBlob(d, max_));
    return ToFetched(d, std::move(bytes));
  }

  absl::StatusOr<std::string> Blob(const Descriptor& d) override {
    return layout_.ReadBlob(d, max_);
  }

  absl::StatusOr<std::unique_ptr<ByteStream>> OpenBlob(
      const Descriptor& d) override {
    return layout_.OpenBlob(d);
  }

  std::string Describe() const override { return loc_.String(); }

 private:
  const OciImageLayout layout_;
  const ImageLocation loc_;
  const size_t max_;
};

class LayoutImageWriter : public ImageWriter {
 public:
  LayoutImageWriter(OciImageLayout layout, ImageLocation loc)
      : layout_(std::move(layout)), loc_(std::move(loc)) {}

  absl::StatusOr<bool> HasBlob(const Descriptor& d) override {
    return layout_.HasBlob(d);
  }
  absl::Status PutBlobFile(const Descriptor& d,
                           const std::string& path) override {
    return layout_.CopyBlobFile(d, path);
  }
  absl::Status PutBlob(const Descriptor& d, absl::string_view bytes) override {
    return layout_.WriteBlob(d, bytes);
  }
  absl::StatusOr<bool> MountBlob(const Descriptor&,
                                 absl::string_view) override {
    return false;
  }
  absl::Status PutManifest(const Descriptor& d,
                           absl::string_view bytes) override {
    return layout_.WriteBlob(d, bytes);
  }
  absl::Status Tag(const Descriptor& root, absl::string_view bytes) override {
    RETURN_IF_ERROR(layout_.WriteBlob(root, bytes));
    Descriptor entry = root;
    if (entry.media_type.empty()) {
      ASSIGN_OR_RETURN(entry.media_type, MediaTypeOf(bytes));
    }
    return layout_.SetIndexEntry(entry, loc_.tag);
  }
  std::string Describe() const override { return loc_.String(); }

 private:
  const OciImageLayout layout_;
  const ImageLocation loc_;
};

absl::StatusOr<std::unique_ptr<RegistryClient>> ClientFor(
    const ImageLocation& location, const RegistryOptions& registry) {
  ASSIGN_OR_RETURN(ImageReference ref,
                   ImageReference::Parse(location.reference));
  return RegistryClient::Create(ref, registry);
}

}  // namespace

absl::StatusOr<ImageLocation> ImageLocation::Parse(absl::string_view text) {
  const std::string quoted = absl::StrCat("\"", text, "\"");
  ImageLocation loc;
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "oci:")) {
    loc.kind = Kind::kOciLayout;
    size_t colon = rest.rfind(':');
    if (colon == absl::string_view::npos) {
      loc.dir = std::string(rest);
    } else {
      loc.dir = std::string(rest.substr(0, colon));
      loc.tag = std::string(rest.substr(colon + 1));
    }
    if (loc.dir.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image location ", quoted, " names no directory (oci:DIR[:TAG])"));
    }
    if (!ValidLayoutTag(loc.tag)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image location ", quoted, ": tag \"", loc.tag,
          "\" may hold only letters, digits, '.', '_' and '-' (the directory "
          "ends at the last ':')"));
    }
    return loc;
  }
  if (absl::ConsumePrefix(&rest, "docker://")) {
    // The reference proper.
  } else if (size_t colon = text.find(':');
             colon != absl::string_view::npos &&
             text.substr(0, colon).find('/') == absl::string_view::npos) {
    const absl::string_view transport = text.substr(0, colon);
    for (const char* t : kOtherTransports) {
      if (transport == t) {
        return absl::InvalidArgumentError(absl::StrCat(
            "image location ", quoted, ": transport \"", transport,
            ":\" is not supported (use oci:DIR[:TAG] or [docker://]REF)"));
      }
    }
  }
  absl::StatusOr<ImageReference> ref = ImageReference::Parse(rest);
  if (!ref.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("image location ", quoted,
                     " is neither oci:DIR[:TAG] nor an image "
                     "reference: ",
                     ref.status().message()));
  }
  loc.kind = Kind::kRegistry;
  loc.reference = std::string(rest);
  return loc;
}

std::string ImageLocation::String() const {
  if (kind == Kind::kRegistry) return absl::StrCat("docker://", reference);
  std::string s = absl::StrCat("oci:", dir);
  // A directory holding ':' keeps its tag separator even without a tag.
  if (!tag.empty() || absl::StrContains(dir, ':')) {
    absl::StrAppend(&s, ":", tag);
  }
  return s;
}

absl::StatusOr<std::unique_ptr<ImageReader>> OpenImageReader(
    const ImageLocation& location, const RegistryOptions& registry) {
  if (location.kind == ImageLocation::Kind::kOciLayout) {
    ASSIGN_OR_RETURN(OciImageLayout layout, OciImageLayout::Open(location.dir));
    return std::unique_ptr<ImageReader>(new LayoutImageReader(
        std::move(layout), location, registry.max_manifest_size));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<RegistryClient> c,
                   ClientFor(location, registry));
  return std::unique_ptr<ImageReader>(new RegistryImageReader(std::move(c)));
}

absl::StatusOr<std::unique_ptr<ImageWriter>> OpenImageWriter(
    const ImageLocation& location, const RegistryOptions& registry) {
  if (location.kind == ImageLocation::Kind::kOciLayout) {
    ASSIGN_OR_RETURN(OciImageLayout layout,
                     OciImageLayout::OpenOrCreate(location.dir));
    return std::unique_ptr<ImageWriter>(
        new LayoutImageWriter(std::move(layout), location));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<RegistryClient> c,
                   ClientFor(location, registry));
  return std::unique_ptr<ImageWriter>(new RegistryImageWriter(std::move(c)));
}

}  // namespace lazypull
