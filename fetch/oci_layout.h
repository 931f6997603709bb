// OciImageLayout: an OCI image layout directory (image-spec "image-layout"):
//
//   DIR/oci-layout         {"imageLayoutVersion":"1.0.0"}
//   DIR/index.json         an image index; its entries name images through
//                          the "org.opencontainers.image.ref.name" annotation
//   DIR/blobs/sha256/HEX   every blob, manifest and index, by digest
//
// Reading: every blob is checked against its descriptor (size and sha256);
// a whole blob before it is returned, a stream at its end (the Read that
// reaches the end fails with DataLoss, as registry blobs do).
//
// Writing: blobs are written to a temporary file in DIR, checked, flushed
// (fsync) and renamed into place, so a blob file is always whole; a blob
// already present with the right content is not rewritten. index.json is
// rewritten the same way (temporary file + rename): SetIndexEntry replaces
// the entries of the same name, keeps every other entry and every other
// top-level field as it was.
//
// Thread-safety: an object is immutable (its methods may run on several
// threads at once), but two writers of one index.json at once (threads or
// processes) may lose one's entry: index.json updates are not locked.
#ifndef LAZYPULL_FETCH_OCI_LAYOUT_H_
#define LAZYPULL_FETCH_OCI_LAYOUT_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"
#include "core/tar_reader.h"
#include "fetch/manifest.h"

namespace lazypull {

inline constexpr char kOciRefNameAnnotation[] =
    "org.opencontainers.image.ref.name";

class OciImageLayout {
 public:
  // An existing layout: DIR/oci-layout must exist and name a version 1.x
  // layout (NotFound / InvalidArgument otherwise).
  static absl::StatusOr<OciImageLayout> Open(const std::string& dir);
  // The layout at `dir`, created as needed: the directory (and parents),
  // oci-layout, blobs/sha256 and an index.json without entries. A
  // directory that holds an oci-layout of another version is refused.
  static absl::StatusOr<OciImageLayout> OpenOrCreate(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::string BlobPath(const Digest& d) const;

  // index.json's entries, in file order.
  absl::StatusOr<std::vector<Descriptor>> Entries() const;
  // The entry whose ref.name is `tag` (the first, should there be several);
  // with `tag` empty, the only entry (FailedPrecondition listing them when
  // there are several, NotFound when there is none).
  absl::StatusOr<Descriptor> Find(absl::string_view tag) const;

  // A whole blob of at most `max_size` bytes (ResourceExhausted beyond),
  // verified. NotFound when absent.
  absl::StatusOr<std::string> ReadBlob(const Descriptor& d,
                                       size_t max_size) const;
  // A blob as a stream, verified at its end.
  absl::StatusOr<std::unique_ptr<ByteStream>> OpenBlob(
      const Descriptor& d) const;

  // Whether blob `d` is present with its size and digest (it is hashed).
  absl::StatusOr<bool> HasBlob(const Descriptor& d) const;
  // Stores `bytes` as blob `d` (InvalidArgument if they are not d's).
  absl::Status WriteBlob(const Descriptor& d, absl::string_view bytes) const;
  // Stores a copy of the file at `path` as blob `d`, hashing as it copies
  // (InvalidArgument, and nothing stored, if it is not d's content).
  absl::Status CopyBlobFile(const Descriptor& d, const std::string& path) const;
  // Stores what `in` yields up to its end as blob `d`, hashing as it copies
  // (InvalidArgument, and nothing stored, if it is not d's content; an error
  // of `in` is returned as is). A blob already stored is kept and `in` left
  // unread.
  absl::Status WriteBlobFrom(const Descriptor& d, ByteStream* in) const;
  // Adds `d` to index.json: with a non-empty `tag`, as the entry of that
  // ref.name (replacing any of the same name); with an empty one, as an
  // untagged entry appended (unless an untagged entry of the same digest is
  // there already). d's media type, size, platform and annotations are
  // written. REQUIRES: blob `d` is stored.
  absl::Status SetIndexEntry(const Descriptor& d, absl::string_view tag) const;

 private:
  explicit OciImageLayout(std::string dir) : dir_(std::move(dir)) {}
  // Writes what `in` yields to a temporary file, checks it against `d` when
  // `d` is given (`from`: where the bytes came from, for the message), and
  // renames it to `final_path`.
  absl::Status WriteAtomically(const std::string& final_path, ByteStream* in,
                               const std::string& from,
                               const Descriptor* d) const;
  absl::Status WriteAtomically(const std::string& final_path,
                               absl::string_view bytes) const;

  std::string dir_;
};

}  // namespace lazypull

#endif  // LAZYPULL_FETCH_OCI_LAYOUT_H_
