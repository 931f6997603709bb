#include "core/file_blob_source.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace lazypull {

absl::StatusOr<std::unique_ptr<FileBlobSource>> FileBlobSource::Open(
    const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return ErrnoToStatus(err, absl::StrCat("stat ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a regular file"));
  }
  return std::unique_ptr<FileBlobSource>(
      new FileBlobSource(fd, static_cast<uint64_t>(st.st_size), path));
}

FileBlobSource::~FileBlobSource() { close(fd_); }

absl::Status FileBlobSource::ReadAt(uint64_t offset, absl::Span<char> dst,
                                    ReadPriority /*priority*/) {
  if (offset > size_ || dst.size() > size_ - offset) {
    return absl::OutOfRangeError(
        absl::StrCat("read [", offset, ", ", offset + dst.size(),
                     ") past the end of ", Describe(), " (", size_, " bytes)"));
  }
  size_t done = 0;
  while (done < dst.size()) {
    ssize_t n = pread(fd_, dst.data() + done, dst.size() - done,
                      static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("pread ", path_));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(
          path_, " shrank while being read (at offset ", offset + done, ")"));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace lazypull
