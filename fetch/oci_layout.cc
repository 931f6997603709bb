#include "fetch/oci_layout.h"

#include <fcntl.h>
#include <simdjson.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/errno_status.h"
#include "core/json_writer.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

constexpr size_t kCopyChunk = 1 << 20;

// Reads the whole file at `path` (at most `max` bytes).
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  std::string out;
  char buf[64 << 10];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      return ErrnoToStatus(e, absl::StrCat("read ", path));
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max) {
      close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat(path, " is larger than the ", max, " bytes accepted"));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

absl::Status WriteAll(int fd, const char* p, size_t n,
                      const std::string& what) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return ErrnoToStatus(errno, absl::StrCat("write ", what));
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// mkdir -p.
absl::Status MakeDirs(const std::string& dir) {
  std::string cur;
  size_t pos = 0;
  while (pos <= dir.size()) {
    size_t slash = dir.find('/', pos);
    if (slash == std::string::npos) slash = dir.size();
    cur = dir.substr(0, slash);
    pos = slash + 1;
    if (cur.empty()) continue;  // the root
    if (mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoToStatus(errno, absl::StrCat("mkdir ", cur));
    }
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("stat ", dir));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, " exists and is not a directory"));
  }
  return absl::OkStatus();
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// A file read to its end through a descriptor the caller owns.
class FdStream : public ByteStream {
 public:
  FdStream(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  absl::StatusOr<absl::string_view> Read(size_t n) override {
    buf_.resize(std::min(n, kCopyChunk));
    ssize_t got;
    do {
      got = read(fd_, buf_.data(), buf_.size());
    } while (got < 0 && errno == EINTR);
    if (got < 0) return ErrnoToStatus(errno, absl::StrCat("read ", path_));
    return absl::string_view(buf_.data(), static_cast<size_t>(got));
  }

 private:
  const int fd_;
  const std::string path_;
  std::string buf_;
};

// The blob as a stream, hashed as it is read.
class FileBlobStream : public ByteStream {
 public:
  FileBlobStream(int fd, Descriptor d, std::string path)
      : fd_(fd), raw_(fd, path), d_(std::move(d)), path_(std::move(path)) {}
  ~FileBlobStream() override { close(fd_); }

  absl::StatusOr<absl::string_view> Read(size_t n) override {
    if (!final_.ok()) return final_;
    if (done_ || n == 0) return absl::string_view();
    absl::StatusOr<absl::string_view> piece = raw_.Read(n);
    if (!piece.ok()) {
      final_ = piece.status();
      return final_;
    }
    if (piece->empty()) {
      done_ = true;
      if (count_ != static_cast<uint64_t>(d_.size)) {
        final_ = absl::DataLossError(
            absl::StrCat("blob ", d_.digest.ToString(), " at ", path_, " has ",
                         count_, " bytes; its descriptor says ", d_.size));
        return final_;
      }
      Digest got_digest = hash_.Finish();
      if (got_digest != d_.digest) {
        final_ = absl::DataLossError(absl::StrCat(
            "blob ", d_.digest.ToString(), " at ", path_,
            " is corrupt: its content hashes to ", got_digest.ToString()));
        return final_;
      }
      return absl::string_view();
    }
    count_ += piece->size();
    if (count_ > static_cast<uint64_t>(d_.size)) {
      final_ = absl::DataLossError(absl::StrCat(
          "blob ", d_.digest.ToString(), " at ", path_, " is longer than the ",
          d_.size, " bytes its descriptor says"));
      return final_;
    }
    hash_.Update(*piece);
    return piece;
  }

 private:
  const int fd_;
  FdStream raw_;
  const Descriptor d_;
  const std::string path_;
  Sha256 hash_;
  uint64_t count_ = 0;
  bool done_ = false;
  absl::Status final_;
};

std::string EntryJson(const Descriptor& d, absl::string_view tag) {
  JsonWriter w;
  w.BeginObject();
  w.Key("mediaType").String(d.media_type);
  w.Key("digest").String(d.digest.ToString());
  w.Key("size").Int(d.size);
  if (d.platform) {
    w.Key("platform").BeginObject();
    w.Key("architecture").String(d.platform->architecture);
    w.Key("os").String(d.platform->os);
    if (!d.platform->variant.empty()) {
      w.Key("variant").String(d.platform->variant);
    }
    w.EndObject();
  }
  std::map<std::string, std::string> ann = d.annotations;
  if (tag.empty()) {
    ann.erase(kOciRefNameAnnotation);
  } else {
    ann[kOciRefNameAnnotation] = std::string(tag);
  }
  if (!ann.empty()) {
    w.Key("annotations").BeginObject();
    for (const auto& [k, v] : ann) w.Key(k).String(v);
    w.EndObject();
  }
  w.EndObject();
  return w.Release();
}

}  // namespace

absl::StatusOr<OciImageLayout> OciImageLayout::Open(const std::string& dir) {
  const std::string marker = dir + "/oci-layout";
  absl::StatusOr<std::string> text = ReadSmallFile(marker, 64 << 10);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(absl::StrCat(
          dir, " is not an OCI image layout (it has no oci-layout file)"));
    }
    return text.status();
  }
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  std::string_view version;
  if (parser.parse(*text).get(root) != simdjson::SUCCESS ||
      root["imageLayoutVersion"].get(version) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat(marker, " does not state an imageLayoutVersion"));
  }
  if (!absl::StartsWith(absl::string_view(version.data(), version.size()),
                        "1.")) {
    return absl::InvalidArgumentError(
        absl::StrCat(marker, ": image layout version ", std::string(version),
                     " is not supported (1.x is)"));
  }
  return OciImageLayout(dir);
}

absl::StatusOr<OciImageLayout> OciImageLayout::OpenOrCreate(
    const std::string& dir) {
  if (dir.empty()) {
    return absl::InvalidArgumentError("OCI layout directory is empty");
  }
  RETURN_IF_ERROR(MakeDirs(dir));
  OciImageLayout l(dir);
  if (Exists(dir + "/oci-layout")) {
    ASSIGN_OR_RETURN(l, Open(dir));
  } else {
    RETURN_IF_ERROR(l.WriteAtomically(dir + "/oci-layout",
                                      "{\"imageLayoutVersion\":\"1.0.0\"}"));
  }
  RETURN_IF_ERROR(MakeDirs(dir + "/blobs/sha256"));
  if (!Exists(dir + "/index.json")) {
    RETURN_IF_ERROR(
        l.WriteAtomically(dir + "/index.json",
                          absl::StrCat("{\"schemaVersion\":2,\"mediaType\":\"",
                                       kOciIndexType, "\",\"manifests\":[]}")));
  }
  return l;
}

std::string OciImageLayout::BlobPath(const Digest& d) const {
  return absl::StrCat(dir_, "/blobs/sha256/", d.Hex());
}

absl::StatusOr<std::vector<Descriptor>> OciImageLayout::Entries() const {
  const std::string path = dir_ + "/index.json";
  absl::StatusOr<std::string> text = ReadSmallFile(path, 64 << 20);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(
          absl::StrCat("OCI layout ", dir_, " has no index.json"));
    }
    return text.status();
  }
  absl::StatusOr<ImageIndex> idx = ParseImageIndex(*text);
  if (!idx.ok()) {
    return absl::Status(idx.status().code(),
                        absl::StrCat(path, ": ", idx.status().message()));
  }
  return std::move(idx->manifests);
}

absl::StatusOr<Descriptor> OciImageLayout::Find(absl::string_view tag) const {
  ASSIGN_OR_RETURN(std::vector<Descriptor> entries, Entries());
  auto name_of = [](const Descriptor& d) {
    auto it = d.annotations.find(kOciRefNameAnnotation);
    return it == d.annotations.end() ? std::string() : it->second;
  };
  std::vector<std::string> names;
  for (const Descriptor& d : entries) {
    std::string n = name_of(d);
    if (!tag.empty() && n == tag) return d;
    names.push_back(n.empty() ? absl::StrCat("untagged ", d.digest.ToString())
                              : n);
  }
  if (!tag.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "OCI layout ", dir_, " has no image tagged \"", tag, "\"",
        names.empty()
            ? std::string(" (it holds none)")
            : absl::StrCat(" (it holds: ", absl::StrJoin(names, ", "), ")")));
  }
  if (entries.empty()) {
    return absl::NotFoundError(
        absl::StrCat("OCI layout ", dir_, " holds no image"));
  }
  if (entries.size() > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "OCI layout ", dir_, " holds ", entries.size(), " images (",
        absl::StrJoin(names, ", "), "): name one with oci:DIR:TAG"));
  }
  return entries[0];
}

absl::StatusOr<std::string> OciImageLayout::ReadBlob(const Descriptor& d,
                                                     size_t max_size) const {
  if (d.size < 0 || static_cast<uint64_t>(d.size) > max_size) {
    return absl::ResourceExhaustedError(
        absl::StrCat("blob ", d.digest.ToString(), " has ", d.size,
                     " bytes, more than the ", max_size, " accepted"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<ByteStream> s, OpenBlob(d));
  std::string out;
  out.reserve(static_cast<size_t>(d.size));
  while (true) {
    ASSIGN_OR_RETURN(absl::string_view piece, s->Read(kCopyChunk));
    if (piece.empty()) return out;
    out.append(piece.data(), piece.size());
  }
}

absl::StatusOr<std::unique_ptr<ByteStream>> OciImageLayout::OpenBlob(
    const Descriptor& d) const {
  const std::string path = BlobPath(d.digest);
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat("blob ", d.digest.ToString(),
                                              " is not in OCI layout ", dir_));
    }
    return ErrnoToStatus(errno, absl::StrCat("open ", path));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return ErrnoToStatus(e, absl::StrCat("stat ", path));
  }
  if (st.st_size != d.size) {
    close(fd);
    return absl::DataLossError(
        absl::StrCat("blob ", d.digest.ToString(), " at ", path, " has ",
                     st.st_size, " bytes; its descriptor says ", d.size));
  }
  return std::unique_ptr<ByteStream>(new FileBlobStream(fd, d, path));
}

absl::StatusOr<bool> OciImageLayout::HasBlob(const Descriptor& d) const {
  struct stat st;
  if (stat(BlobPath(d.digest).c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    return ErrnoToStatus(errno, absl::StrCat("stat ", BlobPath(d.digest)));
  }
  if (st.st_size != d.size) return false;
  ASSIGN_OR_RETURN(std::unique_ptr<ByteStream> s, OpenBlob(d));
  while (true) {
    absl::StatusOr<absl::string_view> piece = s->Read(kCopyChunk);
    if (!piece.ok()) {
      if (absl::IsDataLoss(piece.status())) return false;  // rewritten
      return piece.status();
    }
    if (piece->empty()) return true;
  }
}

absl::Status OciImageLayout::WriteBlob(const Descriptor& d,
                                       absl::string_view bytes) const {
  // Checked even when the blob is there: the caller's bytes are wrong.
  if (bytes.size() != static_cast<uint64_t>(d.size) ||
      Sha256::Of(bytes) != d.digest) {
    return absl::InvalidArgumentError(
        absl::StrCat("blob ", d.digest.ToString(), " (", d.size,
                     " bytes) to store in ", dir_, " has ", bytes.size(),
                     " bytes hashing to ", Sha256::Of(bytes).ToString()));
  }
  ASSIGN_OR_RETURN(bool present, HasBlob(d));
  if (present) return absl::OkStatus();
  MemoryByteStream in(bytes);
  return WriteAtomically(BlobPath(d.digest), &in, "", &d);
}

absl::Status OciImageLayout::CopyBlobFile(const Descriptor& d,
                                          const std::string& path) const {
  ASSIGN_OR_RETURN(bool present, HasBlob(d));
  if (present) return absl::OkStatus();
  int src = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  FdStream in(src, path);
  absl::Status st = WriteAtomically(BlobPath(d.digest), &in, path, &d);
  close(src);
  return st;
}

absl::Status OciImageLayout::WriteBlobFrom(const Descriptor& d,
                                           ByteStream* in) const {
  ASSIGN_OR_RETURN(bool present, HasBlob(d));
  if (present) return absl::OkStatus();
  return WriteAtomically(BlobPath(d.digest), in, "", &d);
}

absl::Status OciImageLayout::WriteAtomically(const std::string& final_path,
                                             absl::string_view bytes) const {
  MemoryByteStream in(bytes);
  return WriteAtomically(final_path, &in, "", nullptr);
}

absl::Status OciImageLayout::WriteAtomically(const std::string& final_path,
                                             ByteStream* in,
                                             const std::string& path,
                                             const Descriptor* d) const {
  std::string tmp = dir_ + "/.lazypull-tmp-XXXXXX";
  int fd = mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    return ErrnoToStatus(errno, absl::StrCat("create a file in ", dir_));
  }
  auto fail = [&](absl::Status st) {
    close(fd);
    unlink(tmp.c_str());
    return st;
  };
  Sha256 hash;
  uint64_t count = 0;
  while (true) {
    absl::StatusOr<absl::string_view> piece = in->Read(kCopyChunk);
    if (!piece.ok()) return fail(piece.status());
    if (piece->empty()) break;
    hash.Update(*piece);
    count += piece->size();
    absl::Status st = WriteAll(fd, piece->data(), piece->size(), tmp);
    if (!st.ok()) return fail(st);
  }
  if (d != nullptr) {
    Digest got = hash.Finish();
    if (count != static_cast<uint64_t>(d->size) || got != d->digest) {
      return fail(absl::InvalidArgumentError(absl::StrCat(
          "blob ", d->digest.ToString(), " (", d->size, " bytes) to store in ",
          dir_, path.empty() ? "" : absl::StrCat(" from ", path), " has ",
          count, " bytes hashing to ", got.ToString())));
    }
  }
  if (fchmod(fd, 0644) != 0) {
    return fail(ErrnoToStatus(errno, absl::StrCat("chmod ", tmp)));
  }
  if (fsync(fd) != 0) {
    return fail(ErrnoToStatus(errno, absl::StrCat("fsync ", tmp)));
  }
  if (close(fd) != 0) {
    int e = errno;
    unlink(tmp.c_str());
    return ErrnoToStatus(e, absl::StrCat("close ", tmp));
  }
  if (rename(tmp.c_str(), final_path.c_str()) != 0) {
    int e = errno;
    unlink(tmp.c_str());
    return ErrnoToStatus(e, absl::StrCat("rename ", tmp, " to ", final_path));
  }
  return absl::OkStatus();
}

absl::Status OciImageLayout::SetIndexEntry(const Descriptor& d,
                                           absl::string_view tag) const {
  if (d.media_type.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index.json entry for ", d.digest.ToString(), " needs a media type"));
  }
  if (!Exists(BlobPath(d.digest))) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot name ", d.digest.ToString(), " in OCI layout ",
                     dir_, ": the blob is not stored"));
  }
  const std::string path = dir_ + "/index.json";
  std::string text = "{}";
  if (Exists(path)) {
    ASSIGN_OR_RETURN(text, ReadSmallFile(path, 64 << 20));
  }
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  simdjson::dom::object obj;
  if (parser.parse(text).get(root) != simdjson::SUCCESS ||
      root.get(obj) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a JSON object"));
  }
  std::string schema = "2", media_type;
  std::vector<std::pair<std::string, std::string>> others;
  std::vector<std::string> entries;
  bool already = false;
  const std::string digest = d.digest.ToString();
  for (auto [key, value] : obj) {
    if (key == "schemaVersion") {
      schema = simdjson::minify(value);
    } else if (key == "mediaType") {
      media_type = simdjson::minify(value);
    } else if (key == "manifests") {
      simdjson::dom::array arr;
      if (value.get(arr) != simdjson::SUCCESS) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": \"manifests\" is not an array"));
      }
      for (simdjson::dom::element e : arr) {
        std::string_view ref;
        const bool named = e["annotations"][kOciRefNameAnnotation].get(ref) ==
                           simdjson::SUCCESS;
        if (!tag.empty() && named &&
            absl::string_view(ref.data(), ref.size()) == tag) {
          continue;  // replaced
        }
        std::string_view dg;
        if (tag.empty() && !named && e["digest"].get(dg) == simdjson::SUCCESS &&
            dg == digest) {
          already = true;
        }
        entries.push_back(simdjson::minify(e));
      }
    } else {
      others.emplace_back(std::string(key), simdjson::minify(value));
    }
  }
  if (!already) entries.push_back(EntryJson(d, tag));
  std::string out = absl::StrCat("{\"schemaVersion\":", schema);
  if (!media_type.empty()) absl::StrAppend(&out, ",\"mediaType\":", media_type);
  absl::StrAppend(&out, ",\"manifests\":[", absl::StrJoin(entries, ","), "]");
  for (const auto& [k, v] : others) {
    out.push_back(',');
    JsonWriter::AppendQuoted(k, &out);
    absl::StrAppend(&out, ":", v);
  }
  out.push_back('}');
  return WriteAtomically(path, out);
}

}  // namespace lazypull
