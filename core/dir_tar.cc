#include "core/dir_tar.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/errno_status.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

constexpr size_t kBlock = 512;
constexpr size_t kFlushAt = 1 << 20;

// Go's archive/tar field sizes.
constexpr size_t kNameSize = 100;
constexpr size_t kPrefixSize = 155;

bool IsAscii(absl::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

// Go's toASCII: drops the bytes a USTAR field cannot hold.
std::string ToAscii(absl::string_view s) {
  std::string out;
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x80) out.push_back(c);
  }
  return out;
}

// Whether `v` fits the octal digits of a field of `len` bytes (one byte is
// the terminating NUL), as Go's fitsInOctal.
bool FitsOctal(size_t len, uint64_t v) {
  return v < (uint64_t{1} << ((len - 1) * 3));
}

// Go's formatString: copied, truncated, NUL-terminated when shorter.
void PutString(char* field, size_t len, absl::string_view s) {
  const size_t n = std::min(len, s.size());
  std::memcpy(field, s.data(), n);
  if (n < len) field[n] = '\0';
}

// Go's formatOctal: zero-padded to len-1 digits, then NUL; 0 if it does not
// fit (the value then travels in a PAX record).
void PutOctal(char* field, size_t len, uint64_t v) {
  if (!FitsOctal(len, v)) v = 0;
  char buf[32];
  snprintf(buf, sizeof(buf), "%0*llo", static_cast<int>(len - 1),
           static_cast<unsigned long long>(v));
  PutString(field, len, buf);
}

// Go's splitUSTARPath.
bool SplitUstarPath(absl::string_view name, std::string* prefix,
                    std::string* suffix) {
  size_t length = name.size();
  if (length <= kNameSize || !IsAscii(name)) return false;
  if (length > kPrefixSize + 1) {
    length = kPrefixSize + 1;
  } else if (name[length - 1] == '/') {
    --length;
  }
  const size_t i = name.substr(0, length).rfind('/');
  if (i == absl::string_view::npos || i == 0) return false;
  const size_t nlen = name.size() - i - 1;
  if (nlen > kNameSize || nlen == 0 || i > kPrefixSize) return false;
  *prefix = std::string(name.substr(0, i));
  *suffix = std::string(name.substr(i + 1));
  return true;
}

// "<len> key=value\n", len counting itself.
std::string PaxRecord(absl::string_view key, absl::string_view value) {
  const size_t base = key.size() + value.size() + 3;  // ' ', '=', '\n'
  size_t len = base + 1;
  while (absl::StrCat(len).size() + base != len) {
    len = absl::StrCat(len).size() + base;
  }
  std::string r = absl::StrCat(len, " ", key, "=");
  r.append(value.data(), value.size());
  r.push_back('\n');
  return r;
}

// Sets the USTAR magic and the checksum (Go's Block.SetFormat).
void FinishBlock(std::string* b) {
  std::memcpy(b->data() + 257,
              "ustar\0"
              "00",
              8);
  std::memset(b->data() + 148, ' ', 8);
  unsigned sum = 0;
  for (char c : *b) sum += static_cast<uint8_t>(c);
  PutOctal(b->data() + 148, 7, sum);
  (*b)[155] = ' ';
}

bool KeepXattr(absl::string_view name) {
  if (name == "security.selinux") return false;
  // Overlayfs' own state on an upper or lower directory of the host (opaque,
  // origin, redirect, metacopy: a metacopy file's data is in another layer)
  // means nothing in an image, and a layer holding it would be read by the
  // overlay it is mounted in.
  if (absl::StartsWith(name, "trusted.overlay.") ||
      absl::StartsWith(name, "user.overlay.")) {
    return false;
  }
  return absl::StartsWith(name, "user.") ||
         absl::StartsWith(name, "trusted.") ||
         absl::StartsWith(name, "security.");
}

// The storable xattrs of `path` (not following a symlink), sorted by name.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadXattrs(
    const std::string& path) {
  std::vector<std::pair<std::string, std::string>> out;
  std::string names;
  while (true) {
    ssize_t n = llistxattr(path.c_str(), nullptr, 0);
    if (n < 0) {
      if (errno == ENOTSUP || errno == ENOSYS) return out;
      return ErrnoToStatus(errno, "llistxattr " + path);
    }
    if (n == 0) return out;
    names.resize(static_cast<size_t>(n));
    n = llistxattr(path.c_str(), names.data(), names.size());
    if (n >= 0) {
      names.resize(static_cast<size_t>(n));
      break;
    }
    if (errno != ERANGE) return ErrnoToStatus(errno, "llistxattr " + path);
  }
  for (size_t p = 0; p < names.size();) {
    size_t e = names.find('\0', p);
    if (e == std::string::npos) e = names.size();
    std::string name = names.substr(p, e - p);
    p = e + 1;
    if (name.empty() || !KeepXattr(name)) continue;
    std::string value;
    bool have = false;
    while (true) {
      ssize_t n = lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
      if (n < 0) break;
      value.resize(static_cast<size_t>(n));
      n = lgetxattr(path.c_str(), name.c_str(), value.data(), value.size());
      if (n >= 0) {
        value.resize(static_cast<size_t>(n));
        have = true;
        break;
      }
      if (errno != ERANGE) break;
    }
    // Unreadable (trusted.* without CAP_SYS_ADMIN) or gone meanwhile.
    if (!have) continue;
    out.emplace_back(std::move(name), std::move(value));
  }
  std::sort(out.begin(), out.end());
  return out;
}

class TreeWriter {
 public:
  TreeWriter(std::string root, const DirTarOptions& options,
             const TarWriteFn& write)
      : root_(std::move(root)), options_(options), write_(write) {}

  absl::StatusOr<DirTarStats> Run() {
    struct stat st;
    if (stat(root_.c_str(), &st) != 0) {
      return ErrnoToStatus(errno, "stat " + root_);
    }
    if (!S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(root_ + " is not a directory");
    }
    RETURN_IF_ERROR(Entry("", st));
    buf_.append(2 * kBlock, '\0');
    RETURN_IF_ERROR(Flush());
    return std::move(stats_);
  }

 private:
  std::string FullPath(const std::string& rel) const {
    return rel.empty() ? root_ : absl::StrCat(root_, "/", rel);
  }

  absl::Status Emit(absl::string_view data) {
    buf_.append(data.data(), data.size());
    if (buf_.size() >= kFlushAt) return Flush();
    return absl::OkStatus();
  }
  absl::Status Flush() {
    if (buf_.empty()) return absl::OkStatus();
    stats_.bytes += buf_.size();
    absl::Status s = write_(buf_);
    buf_.clear();
    return s;
  }

  absl::Status Entry(const std::string& rel, const struct stat& st) {
    const std::string path = FullPath(rel);
    if (S_ISSOCK(st.st_mode)) {
      stats_.skipped.push_back(rel);
      if (options_.warn) {
        options_.warn(absl::StrCat("skipping socket ", path,
                                   ": a tar cannot hold sockets"));
      }
      return absl::OkStatus();
    }
    TarEntryFields e;
    e.name = rel;
    e.mode = st.st_mode & 07777;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    e.mtime = st.st_mtim.tv_sec;
    stats_.newest_mtime = std::max(stats_.newest_mtime, e.mtime);
    if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
      auto [it, inserted] =
          first_names_.try_emplace(std::make_pair(st.st_dev, st.st_ino), rel);
      if (!inserted) {
        e.typeflag = '1';
        e.link = it->second;
        ASSIGN_OR_RETURN(std::string h, EncodeTarHeader(e));
        ++stats_.entries;
        return Emit(h);
      }
    }
    ASSIGN_OR_RETURN(e.xattrs, ReadXattrs(path));
    if (S_ISREG(st.st_mode)) return RegularFile(path, st, std::move(e));
    if (S_ISDIR(st.st_mode)) {
      e.typeflag = '5';
      e.name = rel.empty() ? "./" : rel + "/";
      ASSIGN_OR_RETURN(std::string h, EncodeTarHeader(e));
      ++stats_.entries;
      RETURN_IF_ERROR(Emit(h));
      return Directory(rel);
    }
    if (S_ISLNK(st.st_mode)) {
      e.typeflag = '2';
      ASSIGN_OR_RETURN(e.link, ReadLink(path, st));
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      e.typeflag = S_ISCHR(st.st_mode) ? '3' : '4';
      e.dev_major = major(st.st_rdev);
      e.dev_minor = minor(st.st_rdev);
    } else if (S_ISFIFO(st.st_mode)) {
      e.typeflag = '6';
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": unknown file type ", st.st_mode & S_IFMT));
    }
    ASSIGN_OR_RETURN(std::string h, EncodeTarHeader(e));
    ++stats_.entries;
    return Emit(h);
  }

  absl::StatusOr<std::string> ReadLink(const std::string& path,
                                       const struct stat& st) {
    std::string target(static_cast<size_t>(st.st_size) + 1, '\0');
    while (true) {
      ssize_t n = readlink(path.c_str(), target.data(), target.size());
      if (n < 0) return ErrnoToStatus(errno, "readlink " + path);
      if (static_cast<size_t>(n) < target.size()) {
        target.resize(static_cast<size_t>(n));
        return target;
      }
      target.resize(target.size() * 2 + 64);
    }
  }

  absl::Status RegularFile(const std::string& path, const struct stat& lst,
                           TarEntryFields e) {
    const int fd =
        open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return ErrnoToStatus(errno, "open " + path);
    struct FdCloser {
      int fd;
      ~FdCloser() { close(fd); }
    } closer{fd};
    struct stat st;
    if (fstat(fd, &st) != 0) return ErrnoToStatus(errno, "fstat " + path);
    if (!S_ISREG(st.st_mode) || st.st_ino != lst.st_ino ||
        st.st_dev != lst.st_dev) {
      return absl::AbortedError(
          absl::StrCat(path, " was replaced while the tree was read"));
    }
    e.typeflag = '0';
    e.size = static_cast<uint64_t>(st.st_size);
    ASSIGN_OR_RETURN(std::string h, EncodeTarHeader(e));
    ++stats_.entries;
    RETURN_IF_ERROR(Emit(h));
    uint64_t left = e.size;
    while (left > 0) {
      const size_t want =
          static_cast<size_t>(std::min<uint64_t>(left, 1 << 20));
      const size_t at = buf_.size();
      buf_.resize(at + want);
      ssize_t n = read(fd, buf_.data() + at, want);
      if (n < 0) {
        buf_.resize(at);
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "read " + path);
      }
      buf_.resize(at + static_cast<size_t>(n));
      if (n == 0) {
        return absl::AbortedError(
            absl::StrCat(path, " shrank while it was read (", e.size - left,
                         " of ", e.size, " bytes)"));
      }
      left -= static_cast<uint64_t>(n);
      stats_.file_bytes += static_cast<uint64_t>(n);
      if (buf_.size() >= kFlushAt) RETURN_IF_ERROR(Flush());
    }
    return Emit(std::string((kBlock - e.size % kBlock) % kBlock, '\0'));
  }

  absl::Status Directory(const std::string& rel) {
    const std::string path = FullPath(rel);
    std::vector<std::string> names;
    {
      const int fd =
          open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) return ErrnoToStatus(errno, "open " + path);
      DIR* d = fdopendir(fd);
      if (d == nullptr) {
        const int err = errno;
        close(fd);
        return ErrnoToStatus(err, "opendir " + path);
      }
      errno = 0;
      while (struct dirent* de = readdir(d)) {
        if (std::strcmp(de->d_name, ".") == 0 ||
            std::strcmp(de->d_name, "..") == 0) {
          continue;
        }
        names.emplace_back(de->d_name);
      }
      const int err = errno;
      closedir(d);
      if (err != 0) return ErrnoToStatus(err, "readdir " + path);
    }
    std::sort(names.begin(), names.end());
    for (const std::string& n : names) {
      const std::string child = rel.empty() ? n : absl::StrCat(rel, "/", n);
      const std::string child_path = FullPath(child);
      struct stat st;
      if (lstat(child_path.c_str(), &st) != 0) {
        return ErrnoToStatus(errno, "lstat " + child_path);
      }
      RETURN_IF_ERROR(Entry(child, st));
    }
    return absl::OkStatus();
  }

  const std::string root_;
  const DirTarOptions& options_;
  const TarWriteFn& write_;
  std::string buf_;
  DirTarStats stats_;
  std::map<std::pair<dev_t, ino_t>, std::string> first_names_;
};

}  // namespace

absl::StatusOr<std::string> EncodeTarHeader(const TarEntryFields& e) {
  std::map<std::string, std::string> pax;  // sorted, as Go writes them
  const bool name_fits = IsAscii(e.name) && e.name.size() <= kNameSize;
  std::string prefix, name = e.name;
  bool split = false;
  if (!name_fits) {
    pax["path"] = e.name;
    split = SplitUstarPath(e.name, &prefix, &name);
  }
  if (!IsAscii(e.link) || e.link.size() > kNameSize) pax["linkpath"] = e.link;
  if (!FitsOctal(8, e.uid)) pax["uid"] = absl::StrCat(e.uid);
  if (!FitsOctal(8, e.gid)) pax["gid"] = absl::StrCat(e.gid);
  if (!FitsOctal(12, e.size)) pax["size"] = absl::StrCat(e.size);
  if (e.mtime < 0 || !FitsOctal(12, static_cast<uint64_t>(e.mtime))) {
    pax["mtime"] = absl::StrCat(e.mtime);
  }
  if (!FitsOctal(8, e.dev_major) || !FitsOctal(8, e.dev_minor)) {
    return absl::InvalidArgumentError(
        absl::StrCat(e.name, ": device number ", e.dev_major, ":", e.dev_minor,
                     " does not fit a tar header"));
  }
  for (const auto& [k, v] : e.xattrs) pax[absl::StrCat("SCHILY.xattr.", k)] = v;

  std::string out;
  const bool ustar = pax.empty() || (pax.size() == 1 && split);
  if (ustar) {
    if (!split) name = e.name;
  } else {
    std::string data;
    for (const auto& [k, v] : pax) data += PaxRecord(k, v);
    // Go's path.Join(path.Split(name)... ): "a/PaxHeaders.0/b" for a file
    // "a/b", "a/b/PaxHeaders.0" for a directory "a/b/".
    const absl::string_view full = e.name;
    const size_t cut = full.rfind('/');
    std::string dir, file;
    if (cut == absl::string_view::npos) {
      file = std::string(full);
    } else {
      dir = std::string(full.substr(0, cut));
      file = std::string(full.substr(cut + 1));
    }
    std::string pax_name =
        dir.empty() || dir == "." ? "PaxHeaders.0" : dir + "/PaxHeaders.0";
    if (!file.empty()) absl::StrAppend(&pax_name, "/", file);
    pax_name = ToAscii(pax_name);
    if (pax_name.size() > kNameSize) pax_name.resize(kNameSize);
    while (!pax_name.empty() && pax_name.back() == '/') pax_name.pop_back();
    std::string x(kBlock, '\0');
    PutString(x.data(), 100, pax_name);
    PutOctal(x.data() + 100, 8, 0);
    PutOctal(x.data() + 108, 8, 0);
    PutOctal(x.data() + 116, 8, 0);
    PutOctal(x.data() + 124, 12, data.size());
    PutOctal(x.data() + 136, 12, 0);
    x[156] = 'x';
    FinishBlock(&x);
    out += x;
    out += data;
    out.append((kBlock - data.size() % kBlock) % kBlock, '\0');
    name = ToAscii(e.name);
    prefix.clear();
  }
  std::string h(kBlock, '\0');
  PutString(h.data(), 100, name);
  PutOctal(h.data() + 100, 8, e.mode);
  PutOctal(h.data() + 108, 8, e.uid);
  PutOctal(h.data() + 116, 8, e.gid);
  PutOctal(h.data() + 124, 12, e.size);
  PutOctal(h.data() + 136, 12,
           e.mtime < 0 ? 0 : static_cast<uint64_t>(e.mtime));
  h[156] = e.typeflag;
  PutString(h.data() + 157, 100, ToAscii(e.link));
  PutOctal(h.data() + 329, 8, e.dev_major);
  PutOctal(h.data() + 337, 8, e.dev_minor);
  PutString(h.data() + 345, kPrefixSize, prefix);
  FinishBlock(&h);
  out += h;
  return out;
}

absl::StatusOr<DirTarStats> WriteDirectoryTar(const std::string& root,
                                              const DirTarOptions& options,
                                              const TarWriteFn& write) {
  std::string r = root;
  while (r.size() > 1 && r.back() == '/') r.pop_back();
  TreeWriter w(std::move(r), options, write);
  return w.Run();
}

absl::StatusOr<std::string> DirectoryTar(const std::string& root,
                                         const DirTarOptions& options) {
  std::string out;
  ASSIGN_OR_RETURN(DirTarStats unused,
                   WriteDirectoryTar(root, options, [&](absl::string_view d) {
                     out.append(d.data(), d.size());
                     return absl::OkStatus();
                   }));
  (void)unused;
  return out;
}

}  // namespace lazypull
