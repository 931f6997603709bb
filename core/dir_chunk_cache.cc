#include "core/dir_chunk_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "core/errno_status.h"

namespace lazypull {
namespace {

absl::Status MkdirP(const std::string& path) {
  std::string cur;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || (path[i] == '/' && i > 0)) {
      cur = path.substr(0, i);
      if (mkdir(cur.c_str(), 0700) != 0 && errno != EEXIST) {
        return ErrnoToStatus(errno, absl::StrCat("mkdir ", cur));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DirChunkCache>> DirChunkCache::Open(
    const std::string& dir) {
  if (absl::Status s = MkdirP(dir + "/chunks"); !s.ok()) return s;
  if (absl::Status s = MkdirP(dir + "/tmp"); !s.ok()) return s;
  return std::unique_ptr<DirChunkCache>(new DirChunkCache(dir));
}

std::string DirChunkCache::ChunkPath(const Digest& d) const {
  std::string hex = d.Hex();
  return absl::StrCat(dir_, "/chunks/", hex.substr(0, 2), "/", hex);
}

absl::StatusOr<bool> DirChunkCache::Read(const Digest& d, uint64_t size,
                                         uint64_t offset,
                                         absl::Span<char> out) {
  std::string path = ChunkPath(d);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    return ErrnoToStatus(errno, absl::StrCat("open cache file ", path));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != size) {
    close(fd);
    unlink(path.c_str());  // torn or foreign: drop it, refetch
    return false;
  }
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = pread(fd, out.data() + done, out.size() - done,
                      static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return false;
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  return true;
}

absl::Status DirChunkCache::Insert(const Digest& d, absl::string_view data) {
  std::string path = ChunkPath(d);
  if (access(path.c_str(), F_OK) == 0) return absl::OkStatus();
  std::string hex = d.Hex();
  if (absl::Status s = MkdirP(absl::StrCat(dir_, "/chunks/", hex.substr(0, 2)));
      !s.ok()) {
    return s;
  }
  std::string tmp = absl::StrCat(dir_, "/tmp/", hex, ".", getpid(), ".",
                                 tmp_seq_.fetch_add(1));
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("create ", tmp));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      unlink(tmp.c_str());
      return ErrnoToStatus(err, absl::StrCat("write ", tmp));
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return ErrnoToStatus(err, absl::StrCat("rename ", tmp));
  }
  return absl::OkStatus();
}

bool DirChunkCache::Contains(const Digest& d) {
  return access(ChunkPath(d).c_str(), F_OK) == 0;
}

}  // namespace lazypull
