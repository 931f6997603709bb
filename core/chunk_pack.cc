#include "core/chunk_pack.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "absl/base/internal/endian.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

void EncodeRecord(const PackRecord& r, char* out) {
  std::memcpy(out, r.digest.bytes.data(), 32);
  absl::little_endian::Store64(out + 32, r.offset);
  absl::little_endian::Store64(out + 40, r.size);
}

PackRecord DecodeRecord(const char* in) {
  PackRecord r;
  std::memcpy(r.digest.bytes.data(), in, 32);
  r.offset = absl::little_endian::Load64(in + 32);
  r.size = absl::little_endian::Load64(in + 40);
  return r;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PackWriter>> PackWriter::Create(
    const std::string& dir, const std::string& name) {
  const std::string data = absl::StrCat(dir, "/", name, ".pack");
  const std::string index = absl::StrCat(dir, "/", name, ".idx");
  // The index first: a .pack is never without one to say what is in it.
  int ifd = open(index.c_str(),
                 O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
  if (ifd < 0) return ErrnoToStatus(errno, absl::StrCat("create ", index));
  int dfd = open(data.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (dfd < 0) {
    const int err = errno;
    close(ifd);
    unlink(index.c_str());
    return ErrnoToStatus(err, absl::StrCat("create ", data));
  }
  return std::unique_ptr<PackWriter>(new PackWriter(name, dfd, ifd));
}

PackWriter::~PackWriter() {
  close(data_fd_);
  close(index_fd_);
}

absl::StatusOr<uint64_t> PackWriter::Append(absl::string_view data) {
  IoOp op{data_fd_, size_, const_cast<char*>(data.data()), data.size()};
  RETURN_IF_ERROR(io_->WriteAll({&op, 1}));
  const uint64_t at = size_;
  size_ += data.size();
  return at;
}

absl::Status PackWriter::Commit(absl::Span<const PackRecord> records) {
  std::string buf(records.size() * kPackRecordSize, '\0');
  for (size_t i = 0; i < records.size(); ++i) {
    EncodeRecord(records[i], buf.data() + i * kPackRecordSize);
  }
  // O_APPEND: one write lands whole at the end (a reader may see a prefix
  // of it, never interleaved bytes).
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = write(index_fd_, buf.data() + done, buf.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, "append to a pack index");
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

bool PackWriter::Unlinked() const {
  struct stat st;
  return fstat(data_fd_, &st) != 0 || st.st_nlink == 0;
}

std::string NewPackName() {
  static std::atomic<uint64_t> seq{0};
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return absl::StrCat(getpid(), "-", now.tv_sec, now.tv_nsec / 1000, "-",
                      seq.fetch_add(1));
}

pid_t PackWriterPid(absl::string_view name) {
  int pid = 0;
  if (!absl::SimpleAtoi(name.substr(0, name.find('-')), &pid)) return 0;
  return pid;
}

absl::StatusOr<uint64_t> ReadPackIndex(const std::string& path, uint64_t from,
                                       std::vector<PackRecord>* out) {
  // (Not a fifo, a device or a link someone left there: a regular file,
  // of a size a pack's records can have.)
  int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  struct stat info;
  if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) ||
      static_cast<uint64_t>(info.st_size) > kMaxPackIndexBytes) {
    close(fd);
    return absl::DataLossError(
        absl::StrCat(path, " is not a pack index (not a regular file, or over ",
                     kMaxPackIndexBytes, " bytes)"));
  }
  std::string buf;
  char block[64 * kPackRecordSize];
  uint64_t pos = from;
  absl::Status st;
  while (true) {
    ssize_t n = pread(fd, block, sizeof(block), static_cast<off_t>(pos));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      st = ErrnoToStatus(errno, absl::StrCat("read ", path));
      break;
    }
    if (n == 0) break;
    buf.append(block, static_cast<size_t>(n));
    pos += static_cast<uint64_t>(n);
  }
  close(fd);
  RETURN_IF_ERROR(st);
  const size_t whole = buf.size() / kPackRecordSize;
  for (size_t i = 0; i < whole; ++i) {
    out->push_back(DecodeRecord(buf.data() + i * kPackRecordSize));
  }
  return from + whole * kPackRecordSize;
}

}  // namespace lazypull
