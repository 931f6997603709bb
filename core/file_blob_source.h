// FileBlobSource: a BlobSource over a local file, read with pread(2).
//
// Thread-safety: ReadAt may be called concurrently (pread has no shared file
// position).
#ifndef LAZYPULL_CORE_FILE_BLOB_SOURCE_H_
#define LAZYPULL_CORE_FILE_BLOB_SOURCE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/blob_source.h"

namespace lazypull {

class FileBlobSource final : public BlobSource {
 public:
  // Opens `path` read-only. The file must not change while the source lives;
  // its size is taken once.
  static absl::StatusOr<std::unique_ptr<FileBlobSource>> Open(
      const std::string& path);
  ~FileBlobSource() override;

  uint64_t size() const override { return size_; }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority priority) override;
  using BlobSource::ReadAt;
  std::string Describe() const override { return "file " + path_; }

 private:
  FileBlobSource(int fd, uint64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}

  const int fd_;
  const uint64_t size_;
  const std::string path_;
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_FILE_BLOB_SOURCE_H_
