#include "fetch/image_converter.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <simdjson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "core/dir_tar.h"
#include "core/errno_status.h"
#include "core/json_writer.h"
#include "core/layer_file_converter.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

constexpr char kOciLayerTar[] = "application/vnd.oci.image.layer.v1.tar";
constexpr char kOciLayerGzip[] = "application/vnd.oci.image.layer.v1.tar+gzip";
constexpr char kOciLayerZstd[] = "application/vnd.oci.image.layer.v1.tar+zstd";
constexpr char kDockerLayerGzip[] =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
constexpr char kDockerForeignLayer[] =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
constexpr char kOciNondistributableGzip[] =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
constexpr char kOciConfig[] = "application/vnd.oci.image.config.v1+json";
constexpr char kDockerConfig[] =
    "application/vnd.docker.container.image.v1+json";
// BuildKit's attestation manifests name the manifest they describe.
constexpr char kDockerReferenceDigest[] = "vnd.docker.reference.digest";
// On an index entry: the instance's layers are zstd (containers/image).
constexpr char kZstdInstanceAnnotation[] =
    "io.github.containers.compression.zstd";

// ---- Minimal JSON surgery ---------------------------------------------
//
// Documents are validated with simdjson first; these scanners then only
// locate byte spans of values in valid JSON, so that a rewrite changes the
// values it means to and leaves every other byte as it was.

struct Span {
  size_t begin = 0, end = 0;
};

struct Member {
  std::string key;
  size_t key_begin = 0;
  Span value;
};

bool IsWs(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t SkipWs(absl::string_view t, size_t p) {
  while (p < t.size() && IsWs(t[p])) ++p;
  return p;
}

size_t SkipString(absl::string_view t, size_t p) {
  ++p;  // the opening quote
  while (p < t.size() && t[p] != '"') p += t[p] == '\\' ? 2 : 1;
  return std::min(p + 1, t.size());
}

size_t SkipValue(absl::string_view t, size_t p) {
  if (p >= t.size()) return p;
  if (t[p] == '"') return SkipString(t, p);
  if (t[p] == '{' || t[p] == '[') {
    int depth = 0;
    do {
      const char c = t[p];
      if (c == '"') {
        p = SkipString(t, p);
        continue;
      }
      if (c == '{' || c == '[') ++depth;
      if (c == '}' || c == ']') --depth;
      ++p;
    } while (depth > 0 && p < t.size());
    return p;
  }
  while (p < t.size() && !IsWs(t[p]) && t[p] != ',' && t[p] != ']' &&
         t[p] != '}') {
    ++p;
  }
  return p;
}

absl::Status Malformed(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(what, " is not valid JSON"));
}

// Checks `json` is one valid JSON object; returns its span.
absl::StatusOr<Span> RootObject(absl::string_view json,
                                absl::string_view what) {
  simdjson::dom::parser parser;
  simdjson::dom::object obj;
  if (parser.parse(json.data(), json.size()).get(obj) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not a JSON object"));
  }
  Span s;
  s.begin = SkipWs(json, 0);
  s.end = SkipValue(json, s.begin);
  return s;
}

absl::StatusOr<std::string> UnescapeKey(absl::string_view quoted) {
  if (quoted.find('\\') == absl::string_view::npos) {
    return std::string(quoted.substr(1, quoted.size() - 2));
  }
  simdjson::dom::parser parser;
  std::string_view s;
  if (parser.parse(quoted.data(), quoted.size()).get(s) != simdjson::SUCCESS) {
    return Malformed("an object key");
  }
  return std::string(s);
}

absl::StatusOr<std::vector<Member>> Members(absl::string_view t, Span obj) {
  std::vector<Member> out;
  if (obj.begin >= t.size() || t[obj.begin] != '{') {
    return absl::InvalidArgumentError("expected a JSON object");
  }
  size_t p = SkipWs(t, obj.begin + 1);
  if (p < t.size() && t[p] == '}') return out;
  while (p < obj.end) {
    Member m;
    m.key_begin = p;
    if (t[p] != '"') return Malformed("an object");
    const size_t key_end = SkipString(t, p);
    ASSIGN_OR_RETURN(m.key, UnescapeKey(t.substr(p, key_end - p)));
    p = SkipWs(t, key_end);
    if (p >= t.size() || t[p] != ':') return Malformed("an object");
    m.value.begin = SkipWs(t, p + 1);
    m.value.end = SkipValue(t, m.value.begin);
    out.push_back(std::move(m));
    p = SkipWs(t, out.back().value.end);
    if (p < t.size() && t[p] == ',') {
      p = SkipWs(t, p + 1);
      continue;
    }
    if (p < t.size() && t[p] == '}') return out;
    return Malformed("an object");
  }
  return Malformed("an object");
}

absl::StatusOr<std::vector<Span>> Elements(absl::string_view t, Span arr) {
  std::vector<Span> out;
  if (arr.begin >= t.size() || t[arr.begin] != '[') {
    return absl::InvalidArgumentError("expected a JSON array");
  }
  size_t p = SkipWs(t, arr.begin + 1);
  if (p < t.size() && t[p] == ']') return out;
  while (p < arr.end) {
    Span e;
    e.begin = p;
    e.end = SkipValue(t, p);
    out.push_back(e);
    p = SkipWs(t, e.end);
    if (p < t.size() && t[p] == ',') {
      p = SkipWs(t, p + 1);
      continue;
    }
    if (p < t.size() && t[p] == ']') return out;
    return Malformed("an array");
  }
  return Malformed("an array");
}

const Member* Find(const std::vector<Member>& ms, absl::string_view key) {
  for (const Member& m : ms) {
    if (m.key == key) return &m;
  }
  return nullptr;
}

// The digest a descriptor object at `obj` names ("" if none).
std::string DescriptorDigest(absl::string_view t, Span obj) {
  absl::StatusOr<std::vector<Member>> ms = Members(t, obj);
  const Member* d = ms.ok() ? Find(*ms, "digest") : nullptr;
  if (d == nullptr) return "";
  return std::string(absl::StripPrefix(
      absl::StripSuffix(t.substr(d->value.begin, d->value.end - d->value.begin),
                        "\""),
      "\""));
}

// The digest the top-level "subject" of manifest JSON `t` names (an OCI 1.1
// referrer's), or "".
std::string SubjectDigest(absl::string_view t) {
  absl::StatusOr<Span> root = RootObject(t, "manifest");
  if (!root.ok()) return "";
  absl::StatusOr<std::vector<Member>> ms = Members(t, *root);
  const Member* subject = ms.ok() ? Find(*ms, "subject") : nullptr;
  return subject == nullptr ? "" : DescriptorDigest(t, subject->value);
}

struct Edit {
  size_t begin, end;
  std::string text;
};

std::string ApplyEdits(absl::string_view t, std::vector<Edit> edits) {
  std::stable_sort(
      edits.begin(), edits.end(),
      [](const Edit& a, const Edit& b) { return a.begin < b.begin; });
  std::string out;
  size_t at = 0;
  for (const Edit& e : edits) {
    out.append(t.data() + at, e.begin - at);
    out += e.text;
    at = e.end;
  }
  out.append(t.data() + at, t.size() - at);
  return out;
}

std::string Quoted(absl::string_view s) {
  std::string out;
  JsonWriter::AppendQuoted(s, &out);
  return out;
}

// Edits of one object's members: values replaced, members removed, missing
// ones appended before the closing brace.
class ObjectEdits {
 public:
  static absl::StatusOr<ObjectEdits> Open(absl::string_view t, Span obj) {
    ObjectEdits o;
    o.obj_ = obj;
    ASSIGN_OR_RETURN(o.members_, Members(t, obj));
    return o;
  }
  const std::vector<Member>& members() const { return members_; }

  void Set(absl::string_view key, std::string raw_value) {
    for (const Member& m : members_) {
      if (m.key == key) {
        edits_.push_back({m.value.begin, m.value.end, std::move(raw_value)});
        return;
      }
    }
    const bool comma = !members_.empty() || appended_;
    appended_ = true;
    edits_.push_back(
        {obj_.end - 1, obj_.end - 1,
         absl::StrCat(comma ? "," : "", Quoted(key), ":", raw_value)});
  }
  // REQUIRES: at least one member stays (descriptors keep digest and size).
  void Remove(absl::string_view key) {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].key == key) removed_.insert(i);
    }
  }
  void AppendTo(std::vector<Edit>* edits) {
    // Each run of removed members goes with the separator after it, or,
    // when it ends the object, the one before it: never two ranges that
    // overlap ("urls" and "data" side by side first).
    const size_t n = members_.size();
    for (size_t a = 0; a < n;) {
      if (!removed_.contains(a)) {
        ++a;
        continue;
      }
      size_t b = a;
      while (b + 1 < n && removed_.contains(b + 1)) ++b;
      if (b + 1 < n) {
        edits->push_back(
            {members_[a].key_begin, members_[b + 1].key_begin, ""});
      } else if (a > 0) {
        edits->push_back(
            {members_[a - 1].value.end, members_[b].value.end, ""});
      }
      a = b + 1;
    }
    removed_.clear();
    for (Edit& e : edits_) edits->push_back(std::move(e));
    edits_.clear();
  }

 private:
  Span obj_;
  std::vector<Member> members_;
  std::vector<Edit> edits_;
  absl::flat_hash_set<size_t> removed_;  // member indices
  bool appended_ = false;
};

std::string AnnotationsJson(const std::map<std::string, std::string>& a) {
  JsonWriter w;
  w.BeginObject();
  for (const auto& [k, v] : a) w.Key(k).String(v);
  w.EndObject();
  return w.Release();
}

// Edits turning the descriptor object at `obj` into `to` (media type,
// digest, size, annotations when `set_annotations`); "urls" and "data"
// describe the old blob and go.
absl::Status EditDescriptor(absl::string_view t, Span obj, const Descriptor& to,
                            bool set_annotations, std::vector<Edit>* edits) {
  ASSIGN_OR_RETURN(ObjectEdits o, ObjectEdits::Open(t, obj));
  if (!to.media_type.empty()) o.Set("mediaType", Quoted(to.media_type));
  o.Set("digest", Quoted(to.digest.ToString()));
  o.Set("size", absl::StrCat(to.size));
  if (set_annotations) o.Set("annotations", AnnotationsJson(to.annotations));
  o.Remove("urls");
  o.Remove("data");
  o.AppendTo(edits);
  return absl::OkStatus();
}

// ---- Files --------------------------------------------------------------

std::string DefaultTempRoot(const std::string& asked) {
  if (!asked.empty()) return asked;
  const char* t = getenv("TMPDIR");
  return t != nullptr && *t ? t : "/tmp";
}

// A private scratch directory, removed with what it holds.
class ScratchDir {
 public:
  static absl::StatusOr<std::unique_ptr<ScratchDir>> Create(
      const std::string& parent) {
    std::string tmpl =
        absl::StrCat(DefaultTempRoot(parent), "/lazypull-image-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      return ErrnoToStatus(errno, "create a scratch directory " + tmpl);
    }
    return std::unique_ptr<ScratchDir>(new ScratchDir(tmpl));
  }
  ~ScratchDir() {
    if (DIR* d = opendir(path_.c_str())) {
      while (struct dirent* e = readdir(d)) {
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) {
          unlink(absl::StrCat(path_, "/", e->d_name).c_str());
        }
      }
      closedir(d);
    }
    rmdir(path_.c_str());
  }
  std::string File(absl::string_view name) const {
    return absl::StrCat(path_, "/", name);
  }

 private:
  explicit ScratchDir(std::string p) : path_(std::move(p)) {}
  std::string path_;
};

absl::Status WriteAll(int fd, absl::string_view data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "write " + what);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Reads `in` to its end (which verifies it) into a new file at `path`.
absl::StatusOr<uint64_t> StreamToFile(ByteStream* in, const std::string& path) {
  const int fd =
      open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoToStatus(errno, "create " + path);
  uint64_t total = 0;
  absl::Status st;
  while (true) {
    absl::StatusOr<absl::string_view> d = in->Read(4 << 20);
    if (!d.ok()) {
      st = d.status();
      break;
    }
    if (d->empty()) break;
    st = WriteAll(fd, *d, path);
    if (!st.ok()) break;
    total += d->size();
  }
  if (close(fd) != 0 && st.ok()) st = ErrnoToStatus(errno, "close " + path);
  if (!st.ok()) {
    unlink(path.c_str());
    return st;
  }
  return total;
}

// A ByteStream over an open file (the rootfs reader's layer).
class FdByteStream : public ByteStream {
 public:
  FdByteStream(int fd, uint64_t size) : fd_(fd), size_(size) {}
  absl::StatusOr<absl::string_view> Read(size_t n) override {
    if (pos_ >= size_) return absl::string_view();
    const size_t want = static_cast<size_t>(
        std::min<uint64_t>({n, size_ - pos_, uint64_t{4} << 20}));
    buf_.resize(want);
    ssize_t got = pread(fd_, buf_.data(), want, static_cast<off_t>(pos_));
    while (got < 0 && errno == EINTR) {
      got = pread(fd_, buf_.data(), want, static_cast<off_t>(pos_));
    }
    if (got < 0) return ErrnoToStatus(errno, "read the layer tar");
    if (got == 0) return absl::DataLossError("the layer tar file shrank");
    pos_ += static_cast<uint64_t>(got);
    return absl::string_view(buf_.data(), static_cast<size_t>(got));
  }

 private:
  int fd_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string buf_;
};

class StringByteStream : public ByteStream {
 public:
  explicit StringByteStream(std::string s) : s_(std::move(s)), in_(s_) {}
  absl::StatusOr<absl::string_view> Read(size_t n) override {
    return in_.Read(n);
  }

 private:
  std::string s_;
  MemoryByteStream in_;
};

// ---- Classification -----------------------------------------------------

enum class LayerKind { kTar, kForeign, kOther };

LayerKind ClassifyLayer(absl::string_view mt) {
  if (absl::StrContains(mt, "nondistributable") ||
      absl::StrContains(mt, "foreign")) {
    return LayerKind::kForeign;
  }
  // ocicrypt's "+encrypted" layers cannot be read without their keys.
  if (absl::StrContains(mt, "+encrypted")) return LayerKind::kOther;
  if (absl::StartsWith(mt, kOciLayerTar) ||
      absl::StartsWith(mt, "application/vnd.docker.image.rootfs.diff.tar")) {
    return LayerKind::kTar;
  }
  return LayerKind::kOther;
}

// Annotations a layer conversion replaces: those of a previous eStargz or
// zstd:chunked form would lie about the new blob.
bool IsLayerFormatAnnotation(absl::string_view key) {
  return key == kTocDigestAnnotation ||
         key == "io.containers.estargz.uncompressed-size" ||
         absl::StartsWith(key, "io.lazypull.") ||
         absl::StartsWith(key, "io.containers.zstd-chunked.") ||
         absl::StartsWith(key, "io.github.containers.zstd-chunked.");
}

std::string HumanBytes(int64_t n) {
  if (n < 1000) return absl::StrCat(n, " B");
  if (n < 1000 * 1000) {
    return absl::StrFormat("%.1f kB", static_cast<double>(n) / 1e3);
  }
  return absl::StrFormat("%.1f MB", static_cast<double>(n) / 1e6);
}

// ---- The conversion -----------------------------------------------------

struct Written {
  Descriptor desc;
  std::string bytes;
  bool converted_layers = false;  // an image manifest with layers rewritten
};

class Converter {
 public:
  Converter(ImageReader* src, ImageWriter* dst, const ImageConvertOptions& o,
            ScratchDir* scratch)
      : src_(src),
        dst_(dst),
        o_(o),
        scratch_(scratch),
        to_oci_(o.layer.compression == Compression::kZstd) {}

  absl::StatusOr<ImageConvertReport> Run() {
    ASSIGN_OR_RETURN(FetchedManifest root, src_->Root());
    Descriptor from;
    from.digest = root.digest;
    from.size = static_cast<int64_t>(root.bytes.size());
    from.media_type = root.content_type;
    Written w;
    if (root.kind == ManifestKind::kIndex) {
      ASSIGN_OR_RETURN(w, Index(root, from, 0));
    } else {
      ASSIGN_OR_RETURN(w, Manifest(root, from, std::nullopt));
    }
    RETURN_IF_ERROR(dst_->Tag(w.desc, w.bytes));
    Progress(absl::StrCat("tagged ", dst_->Describe(), " with ",
                          w.desc.digest.ToString()));
    report_.root = w.desc;
    return std::move(report_);
  }

 private:
  void Progress(const std::string& line) const {
    if (o_.progress) o_.progress(line);
  }

  // Whether the destination has `d` already or (`mountable`, between two
  // repositories of one registry) mounted it; counted as skipped.
  absl::StatusOr<bool> Present(const Descriptor& d, bool mountable) {
    ASSIGN_OR_RETURN(bool has, dst_->HasBlob(d));
    if (!has && mountable && !o_.mount_from_repository.empty()) {
      ASSIGN_OR_RETURN(has, dst_->MountBlob(d, o_.mount_from_repository));
    }
    if (has) ++report_.blobs_skipped;
    return has;
  }

  // Sends a blob held in the file at `path` (or in `bytes`) unless the
  // destination has it; *uploaded says which.
  absl::Status Send(const Descriptor& d, const std::string* path,
                    absl::string_view bytes, bool mountable, bool* uploaded) {
    *uploaded = false;
    ASSIGN_OR_RETURN(bool present, Present(d, mountable));
    if (present) return absl::OkStatus();
    if (path != nullptr) {
      RETURN_IF_ERROR(dst_->PutBlobFile(d, *path));
    } else {
      RETURN_IF_ERROR(dst_->PutBlob(d, bytes));
    }
    ++report_.blobs_uploaded;
    *uploaded = true;
    return absl::OkStatus();
  }

  // Copies blob `d` as it is (a non-tar layer), through a scratch file.
  absl::Status CopyBlob(const Descriptor& d) {
    ASSIGN_OR_RETURN(bool present, Present(d, /*mountable=*/true));
    if (present) return absl::OkStatus();
    const std::string path = scratch_->File(absl::StrCat("copy-", ++files_));
    ASSIGN_OR_RETURN(std::unique_ptr<ByteStream> in, src_->OpenBlob(d));
    ASSIGN_OR_RETURN(uint64_t n, StreamToFile(in.get(), path));
    (void)n;
    absl::Status st = dst_->PutBlobFile(d, path);
    unlink(path.c_str());
    RETURN_IF_ERROR(st);
    ++report_.blobs_uploaded;
    return absl::OkStatus();
  }

  // What converting one blob gave, whatever descriptor listed it.
  struct LayerResult {
    Descriptor to;  // media type, digest, size, the writer's annotations
    Digest toc_digest, diff_id;
    std::vector<std::string> missing_prioritized;
  };

  absl::StatusOr<ConvertedLayer> Layer(const Descriptor& from,
                                       const std::string& layer_type,
                                       const Platform& platform, size_t i,
                                       size_t n) {
    LayerWriterOptions lo = o_.layer;
    lo.prioritized_files.clear();
    if (o_.prioritized_files) {
      lo.prioritized_files = o_.prioritized_files(platform, i);
    }
    const std::string label =
        absl::StrCat("layer ", i + 1, "/", n, " ", from.digest.ToString());
    // The same blob with the same list converts to the same bytes: a layer
    // listed twice (or shared by two platforms) is converted once.
    const std::string key =
        absl::StrCat(from.digest.ToString(), "\n", layer_type, "\n",
                     absl::StrJoin(lo.prioritized_files, "\n"));
    auto it = converted_.find(key);
    if (it != converted_.end()) {
      Progress(absl::StrCat(label, " -> ", it->second.to.digest.ToString(),
                            " (converted above)"));
    } else {
      ASSIGN_OR_RETURN(LayerResult lr, ConvertBlob(from, layer_type, lo));
      Progress(absl::StrCat(label, " -> ", lr.to.digest.ToString(), " (",
                            HumanBytes(from.size), " -> ",
                            HumanBytes(lr.to.size),
                            last_uploaded_ ? "" : ", already there", ")"));
      it = converted_.emplace(key, std::move(lr)).first;
    }
    const LayerResult& lr = it->second;
    ConvertedLayer out;
    out.converted = true;
    out.from = from;
    out.to = lr.to;
    out.to.annotations.clear();
    for (const auto& [k, v] : from.annotations) {
      if (!IsLayerFormatAnnotation(k)) out.to.annotations[k] = v;
    }
    for (const auto& [k, v] : lr.to.annotations) out.to.annotations[k] = v;
    out.toc_digest = lr.toc_digest;
    out.missing_prioritized = lr.missing_prioritized;
    last_diff_id_ = lr.diff_id;
    return out;
  }

  // Downloads blob `from` into a scratch file, converts it and sends the
  // result unless the destination has it.
  absl::StatusOr<LayerResult> ConvertBlob(const Descriptor& from,
                                          const std::string& layer_type,
                                          const LayerWriterOptions& lo) {
    const std::string in_path = scratch_->File(absl::StrCat("in-", ++files_));
    const std::string out_path = scratch_->File(absl::StrCat("out-", files_));
    struct Cleanup {
      std::string a, b;
      ~Cleanup() {
        unlink(a.c_str());
        unlink(b.c_str());
      }
    } cleanup{in_path, out_path};
    {
      ASSIGN_OR_RETURN(std::unique_ptr<ByteStream> in, src_->OpenBlob(from));
      ASSIGN_OR_RETURN(uint64_t got, StreamToFile(in.get(), in_path));
      (void)got;
    }
    ASSIGN_OR_RETURN(LayerWriteResult r,
                     ConvertLayerFile(in_path, out_path, lo));
    LayerResult lr;
    lr.to.media_type = layer_type;
    lr.to.digest = r.blob_digest;
    lr.to.size = static_cast<int64_t>(r.blob_size);
    for (const auto& [k, v] : r.annotations) lr.to.annotations[k] = v;
    lr.toc_digest = r.toc_digest;
    lr.diff_id = r.diff_id;
    lr.missing_prioritized = std::move(r.missing_prioritized);
    RETURN_IF_ERROR(Send(lr.to, &out_path, "", false, &last_uploaded_));
    return lr;
  }

  // `subjects`: manifests converted already, by old digest: a `subject`
  // naming one of them names its new descriptor.
  absl::StatusOr<Written> Manifest(
      const FetchedManifest& fm, const Descriptor& from,
      std::optional<Platform> platform,
      const std::map<std::string, Descriptor>* subjects = nullptr) {
    ASSIGN_OR_RETURN(ImageManifest m, ParseImageManifest(fm.bytes));
    const std::string what = absl::StrCat("manifest ", from.digest.ToString());
    auto fail = [&](const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
    };
    const bool docker =
        m.media_type == kDockerManifestType ||
        (m.media_type.empty() && fm.content_type == kDockerManifestType);
    const bool to_oci = docker && to_oci_;
    const std::string layer_type =
        to_oci_ ? kOciLayerZstd : (docker ? kDockerLayerGzip : kOciLayerGzip);

    absl::StatusOr<std::string> config = src_->Blob(m.config);
    if (!config.ok()) return fail(config.status());
    absl::StatusOr<ImageConfig> parsed = ParseImageConfig(*config);
    ConvertedManifest cm;
    cm.from = from;
    if (platform) {
      cm.platform = *platform;
    } else if (parsed.ok()) {
      cm.platform = parsed->platform;
    }
    Progress(absl::StrCat(what, " (", cm.platform.String(),
                          "): ", m.layers.size(), " layer(s)"));

    // Layers.
    std::vector<std::optional<Digest>> new_diff_ids(m.layers.size());
    bool any_converted = false;
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const Descriptor& l = m.layers[i];
      ConvertedLayer cl;
      cl.from = l;
      cl.to = l;
      switch (ClassifyLayer(l.media_type)) {
        case LayerKind::kTar: {
          absl::StatusOr<ConvertedLayer> c =
              Layer(l, layer_type, cm.platform, i, m.layers.size());
          if (!c.ok()) {
            return absl::Status(
                c.status().code(),
                absl::StrCat(what, " (", cm.platform.String(), "), layer ",
                             i + 1, "/", m.layers.size(), " ",
                             l.digest.ToString(), ": ", c.status().message()));
          }
          cl = std::move(*c);
          new_diff_ids[i] = last_diff_id_;
          any_converted = true;
          break;
        }
        case LayerKind::kForeign:
          if (to_oci && l.media_type == kDockerForeignLayer) {
            cl.to.media_type = kOciNondistributableGzip;
          }
          Progress(absl::StrCat("layer ", i + 1, "/", m.layers.size(), " ",
                                l.digest.ToString(),
                                ": non-distributable, left as it is"));
          break;
        case LayerKind::kOther: {
          absl::Status s = CopyBlob(l);
          if (!s.ok()) return fail(s);
          Progress(absl::StrCat("layer ", i + 1, "/", m.layers.size(), " ",
                                l.digest.ToString(), " (", l.media_type,
                                "): copied unchanged"));
          break;
        }
      }
      cm.layers.push_back(std::move(cl));
    }

    // Config: diff_ids rewritten in place.
    Descriptor config_to = m.config;
    std::string new_config = *config;
    if (any_converted) {
      if (!parsed.ok()) return fail(parsed.status());
      if (parsed->diff_ids.size() != m.layers.size()) {
        return fail(absl::FailedPreconditionError(
            absl::StrCat("its config lists ", parsed->diff_ids.size(),
                         " diff_ids for ", m.layers.size(), " layers")));
      }
      absl::StatusOr<std::string> c = RewriteDiffIds(*config, new_diff_ids);
      if (!c.ok()) return fail(c.status());
      new_config = std::move(*c);
      config_to.digest = Sha256::Of(new_config);
      config_to.size = static_cast<int64_t>(new_config.size());
    }
    if (to_oci && config_to.media_type == kDockerConfig) {
      config_to.media_type = kOciConfig;
    }
    bool uploaded;
    absl::Status s = Send(config_to, nullptr, new_config,
                          config_to.digest == m.config.digest, &uploaded);
    if (!s.ok()) return fail(s);

    // The manifest itself.
    ASSIGN_OR_RETURN(Span root, RootObject(fm.bytes, what));
    ASSIGN_OR_RETURN(ObjectEdits top, ObjectEdits::Open(fm.bytes, root));
    std::vector<Edit> edits;
    const std::string new_type =
        docker && !to_oci ? kDockerManifestType : kOciManifestType;
    if (to_oci) top.Set("mediaType", Quoted(kOciManifestType));
    const Member* config_member = Find(top.members(), "config");
    const Member* layers_member = Find(top.members(), "layers");
    if (config_member == nullptr || layers_member == nullptr) {
      return fail(absl::InvalidArgumentError("no config or layers"));
    }
    RETURN_IF_ERROR(EditDescriptor(fm.bytes, config_member->value, config_to,
                                   false, &edits));
    ASSIGN_OR_RETURN(std::vector<Span> layer_spans,
                     Elements(fm.bytes, layers_member->value));
    if (layer_spans.size() != m.layers.size()) {
      return fail(absl::InternalError("layers miscounted"));
    }
    for (size_t i = 0; i < layer_spans.size(); ++i) {
      const ConvertedLayer& cl = cm.layers[i];
      if (cl.converted) {
        RETURN_IF_ERROR(
            EditDescriptor(fm.bytes, layer_spans[i], cl.to, true, &edits));
      } else if (cl.to.media_type != cl.from.media_type) {
        ASSIGN_OR_RETURN(ObjectEdits le,
                         ObjectEdits::Open(fm.bytes, layer_spans[i]));
        le.Set("mediaType", Quoted(cl.to.media_type));
        le.AppendTo(&edits);
      }
    }
    if (const Member* subject = Find(top.members(), "subject");
        subject != nullptr && subjects != nullptr) {
      auto to = subjects->find(DescriptorDigest(fm.bytes, subject->value));
      if (to != subjects->end()) {
        RETURN_IF_ERROR(EditDescriptor(fm.bytes, subject->value, to->second,
                                       false, &edits));
      }
    }
    top.AppendTo(&edits);
    Written w;
    w.bytes = ApplyEdits(fm.bytes, std::move(edits));
    w.converted_layers = any_converted;
    w.desc = from;
    w.desc.media_type = new_type;
    w.desc.digest = Sha256::Of(w.bytes);
    w.desc.size = static_cast<int64_t>(w.bytes.size());
    s = dst_->PutManifest(w.desc, w.bytes);
    if (!s.ok()) return fail(s);
    Progress(absl::StrCat(what, " -> ", w.desc.digest.ToString()));
    cm.to = w.desc;
    report_.manifests.push_back(std::move(cm));
    return w;
  }

  // The config with rootfs.diff_ids[i] replaced where ids[i] is set.
  absl::StatusOr<std::string> RewriteDiffIds(
      const std::string& config,
      const std::vector<std::optional<Digest>>& ids) {
    ASSIGN_OR_RETURN(Span root, RootObject(config, "the config"));
    ASSIGN_OR_RETURN(std::vector<Member> top, Members(config, root));
    const Member* rootfs = Find(top, "rootfs");
    if (rootfs == nullptr) {
      return absl::InvalidArgumentError("the config has no rootfs");
    }
    ASSIGN_OR_RETURN(std::vector<Member> rm, Members(config, rootfs->value));
    const Member* diff_ids = Find(rm, "diff_ids");
    if (diff_ids == nullptr) {
      return absl::InvalidArgumentError("the config has no rootfs.diff_ids");
    }
    ASSIGN_OR_RETURN(std::vector<Span> el, Elements(config, diff_ids->value));
    if (el.size() != ids.size()) {
      return absl::InvalidArgumentError("rootfs.diff_ids miscounted");
    }
    std::vector<Edit> edits;
    for (size_t i = 0; i < el.size(); ++i) {
      if (ids[i])
        edits.push_back({el[i].begin, el[i].end, Quoted(ids[i]->ToString())});
    }
    return ApplyEdits(config, std::move(edits));
  }

  absl::StatusOr<Written> Index(const FetchedManifest& fm,
                                const Descriptor& from, int depth) {
    const std::string what = absl::StrCat("index ", from.digest.ToString());
    if (depth > 3) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": indexes nested more than 4 deep"));
    }
    ASSIGN_OR_RETURN(ImageIndex idx, ParseImageIndex(fm.bytes));
    const bool docker =
        idx.media_type == kDockerManifestListType ||
        (idx.media_type.empty() && fm.content_type == kDockerManifestListType);
    std::vector<bool> keep(idx.manifests.size(), true);
    if (o_.only_platform) {
      ASSIGN_OR_RETURN(Descriptor chosen,
                       SelectPlatform(idx, *o_.only_platform));
      bool found = false;
      for (size_t i = 0; i < idx.manifests.size(); ++i) {
        const Descriptor& d = idx.manifests[i];
        keep[i] =
            !found && d.digest == chosen.digest &&
            d.platform.has_value() == chosen.platform.has_value() &&
            (!d.platform || d.platform->String() == chosen.platform->String());
        found = found || keep[i];
      }
    }
    // Children first; their new descriptors by old digest.
    std::vector<std::optional<Written>> children(idx.manifests.size());
    std::map<std::string, std::string> renamed;  // old digest -> new
    std::map<std::string, Descriptor> subjects;  // old digest -> new one
    // An entry repeated (same digest and platform) is converted once: an
    // index of 2000 copies of one entry took 4002 requests.
    std::map<std::string, size_t> first_of;
    std::vector<std::optional<FetchedManifest>> fetched(idx.manifests.size());
    for (size_t i = 0; i < idx.manifests.size(); ++i) {
      if (!keep[i]) continue;
      const Descriptor& d = idx.manifests[i];
      const std::string key = absl::StrCat(
          d.digest.ToString(), " ", d.platform ? d.platform->String() : "");
      if (first_of.count(key)) continue;
      first_of[key] = i;
      absl::StatusOr<FetchedManifest> child = src_->Manifest(d);
      if (!child.ok()) {
        return absl::Status(child.status().code(),
                            absl::StrCat(what, ": ", child.status().message()));
      }
      fetched[i] = *std::move(child);
    }
    // Referrers (an OCI 1.1 `subject`: signatures, SBOMs) of an entry of
    // this index after it, whose new descriptor their subject then names.
    std::set<std::string> listed;
    for (size_t i = 0; i < idx.manifests.size(); ++i) {
      if (fetched[i]) listed.insert(idx.manifests[i].digest.ToString());
    }
    for (bool referrers : {false, true}) {
      for (size_t i = 0; i < idx.manifests.size(); ++i) {
        if (!fetched[i] ||
            listed.count(SubjectDigest(fetched[i]->bytes)) != referrers) {
          continue;
        }
        const Descriptor& d = idx.manifests[i];
        Written w;
        if (fetched[i]->kind == ManifestKind::kIndex) {
          ASSIGN_OR_RETURN(w, Index(*fetched[i], d, depth + 1));
        } else {
          ASSIGN_OR_RETURN(w, Manifest(*fetched[i], d, d.platform, &subjects));
        }
        renamed[d.digest.ToString()] = w.desc.digest.ToString();
        subjects[d.digest.ToString()] = w.desc;
        children[i] = std::move(w);
      }
    }
    for (size_t i = 0; i < idx.manifests.size(); ++i) {
      if (!keep[i] || fetched[i]) continue;
      const Descriptor& d = idx.manifests[i];
      children[i] = children[first_of.at(absl::StrCat(
          d.digest.ToString(), " ", d.platform ? d.platform->String() : ""))];
    }
    ASSIGN_OR_RETURN(Span root, RootObject(fm.bytes, what));
    ASSIGN_OR_RETURN(ObjectEdits top, ObjectEdits::Open(fm.bytes, root));
    const Member* manifests = Find(top.members(), "manifests");
    if (manifests == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": no manifests"));
    }
    ASSIGN_OR_RETURN(std::vector<Span> spans,
                     Elements(fm.bytes, manifests->value));
    if (spans.size() != idx.manifests.size()) {
      return absl::InternalError(absl::StrCat(what, ": entries miscounted"));
    }
    std::vector<std::string> entries;
    std::vector<Edit> in_place;
    for (size_t i = 0; i < spans.size(); ++i) {
      if (!keep[i]) continue;
      Descriptor to = children[i]->desc;
      to.annotations = idx.manifests[i].annotations;
      bool set_annotations = false;
      auto ref = to.annotations.find(kDockerReferenceDigest);
      if (ref != to.annotations.end() && renamed.count(ref->second)) {
        ref->second = renamed[ref->second];
        set_annotations = true;
      }
      // Podman's mark of a zstd instance (containers/image chooses among
      // instances by it) says what the entry's layers now are.
      if (children[i]->converted_layers) {
        auto z = to.annotations.find(kZstdInstanceAnnotation);
        if (to_oci_ && (z == to.annotations.end() || z->second != "true")) {
          to.annotations[kZstdInstanceAnnotation] = "true";
          set_annotations = true;
        } else if (!to_oci_ && z != to.annotations.end()) {
          to.annotations.erase(z);
          set_annotations = true;
        }
      }
      std::vector<Edit> e;
      RETURN_IF_ERROR(
          EditDescriptor(fm.bytes, spans[i], to, set_annotations, &e));
      if (o_.only_platform) {
        // Shift the edits to the entry's own text.
        for (Edit& x : e) {
          x.begin -= spans[i].begin;
          x.end -= spans[i].begin;
        }
        entries.push_back(
            ApplyEdits(absl::string_view(fm.bytes).substr(
                           spans[i].begin, spans[i].end - spans[i].begin),
                       std::move(e)));
      } else {
        for (Edit& x : e) in_place.push_back(std::move(x));
      }
    }
    std::vector<Edit> edits = std::move(in_place);
    if (o_.only_platform) {
      edits.push_back({manifests->value.begin, manifests->value.end,
                       absl::StrCat("[", absl::StrJoin(entries, ","), "]")});
    }
    const bool to_oci = docker && to_oci_;
    if (to_oci) top.Set("mediaType", Quoted(kOciIndexType));
    top.AppendTo(&edits);
    Written w;
    w.bytes = ApplyEdits(fm.bytes, std::move(edits));
    w.desc = from;
    w.desc.media_type =
        docker && !to_oci ? kDockerManifestListType : kOciIndexType;
    w.desc.digest = Sha256::Of(w.bytes);
    w.desc.size = static_cast<int64_t>(w.bytes.size());
    RETURN_IF_ERROR(dst_->PutManifest(w.desc, w.bytes));
    Progress(absl::StrCat(what, " -> ", w.desc.digest.ToString()));
    return w;
  }

  ImageReader* const src_;
  ImageWriter* const dst_;
  const ImageConvertOptions& o_;
  ScratchDir* const scratch_;
  const bool to_oci_;
  ImageConvertReport report_;
  Digest last_diff_id_;         // set by Layer()
  bool last_uploaded_ = false;  // set by ConvertBlob()
  // ConvertBlob() results by source digest, media type and prioritized list.
  std::map<std::string, LayerResult> converted_;
  int files_ = 0;
};

// ---- push DIR -----------------------------------------------------------

class RootfsImageReader : public ImageReader {
 public:
  static absl::StatusOr<std::unique_ptr<ImageReader>> Open(
      const std::string& dir, const RootfsImageOptions& o) {
    std::string tmpl =
        absl::StrCat(DefaultTempRoot(o.temp_dir), "/lazypull-rootfs-XXXXXX");
    const int fd = mkstemp(tmpl.data());
    if (fd < 0) return ErrnoToStatus(errno, "create " + tmpl);
    unlink(tmpl.c_str());
    std::unique_ptr<RootfsImageReader> r(new RootfsImageReader(dir, fd));
    Sha256 h;
    DirTarOptions to;
    to.warn = o.warn;
    ASSIGN_OR_RETURN(DirTarStats st,
                     WriteDirectoryTar(dir, to, [&](absl::string_view d) {
                       h.Update(d);
                       return WriteAll(fd, d, "the layer tar of " + dir);
                     }));
    r->layer_.media_type = kOciLayerTar;
    r->layer_.digest = h.Finish();
    r->layer_.size = static_cast<int64_t>(st.bytes);

    // The image is as new as its newest file: a time clients show (they
    // showed none, or the pull's), and the same tree pushed again gives the
    // same config.
    const std::string created = absl::FormatTime(
        "%Y-%m-%dT%H:%M:%SZ", absl::FromUnixSeconds(st.newest_mtime),
        absl::UTCTimeZone());
    JsonWriter c;
    c.BeginObject();
    c.Key("created").String(created);
    c.Key("architecture").String(o.platform.architecture);
    if (!o.platform.variant.empty())
      c.Key("variant").String(o.platform.variant);
    c.Key("os").String(o.platform.os);
    c.Key("config").BeginObject().EndObject();
    c.Key("rootfs").BeginObject();
    c.Key("type").String("layers");
    c.Key("diff_ids").BeginArray().String(r->layer_.digest.ToString());
    c.EndArray().EndObject();
    c.Key("history").BeginArray().BeginObject();
    c.Key("created").String(created);
    c.Key("created_by").String("lazypull push");
    c.EndObject().EndArray();
    c.EndObject();
    r->config_ = c.Release();
    r->config_desc_.media_type = kOciConfig;
    r->config_desc_.digest = Sha256::Of(r->config_);
    r->config_desc_.size = static_cast<int64_t>(r->config_.size());

    JsonWriter m;
    m.BeginObject();
    m.Key("schemaVersion").Int(2);
    m.Key("mediaType").String(kOciManifestType);
    auto desc = [&m](const Descriptor& d) {
      m.BeginObject();
      m.Key("mediaType").String(d.media_type);
      m.Key("digest").String(d.digest.ToString());
      m.Key("size").Int(d.size);
      m.EndObject();
    };
    m.Key("config");
    desc(r->config_desc_);
    m.Key("layers").BeginArray();
    desc(r->layer_);
    m.EndArray();
    m.EndObject();
    r->manifest_.bytes = m.Release();
    r->manifest_.digest = Sha256::Of(r->manifest_.bytes);
    r->manifest_.kind = ManifestKind::kManifest;
    r->manifest_.content_type = kOciManifestType;
    return std::unique_ptr<ImageReader>(std::move(r));
  }

  ~RootfsImageReader() override { close(fd_); }

  absl::StatusOr<FetchedManifest> Root() override { return manifest_; }
  absl::StatusOr<FetchedManifest> Manifest(const Descriptor& d) override {
    if (d.digest == manifest_.digest) return manifest_;
    return NotHere(d);
  }
  absl::StatusOr<std::string> Blob(const Descriptor& d) override {
    if (d.digest == config_desc_.digest) return config_;
    return NotHere(d);
  }
  absl::StatusOr<std::unique_ptr<ByteStream>> OpenBlob(
      const Descriptor& d) override {
    if (d.digest == layer_.digest) {
      return std::unique_ptr<ByteStream>(
          new FdByteStream(fd_, static_cast<uint64_t>(layer_.size)));
    }
    if (d.digest == config_desc_.digest) {
      return std::unique_ptr<ByteStream>(new StringByteStream(config_));
    }
    return NotHere(d);
  }
  std::string Describe() const override { return "directory " + dir_; }

 private:
  RootfsImageReader(std::string dir, int fd) : dir_(std::move(dir)), fd_(fd) {}
  absl::Status NotHere(const Descriptor& d) const {
    return absl::NotFoundError(
        absl::StrCat(d.digest.ToString(), " is not in ", Describe()));
  }

  std::string dir_;
  int fd_;
  Descriptor layer_, config_desc_;
  std::string config_;
  FetchedManifest manifest_;
};

}  // namespace

absl::StatusOr<ImageConvertReport> ConvertImage(
    ImageReader* source, ImageWriter* destination,
    const ImageConvertOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<ScratchDir> scratch,
                   ScratchDir::Create(options.temp_dir));
  Converter c(source, destination, options, scratch.get());
  absl::StatusOr<ImageConvertReport> r = c.Run();
  if (!r.ok()) {
    return absl::Status(
        r.status().code(),
        absl::StrCat(source->Describe(), " -> ", destination->Describe(), ": ",
                     r.status().message()));
  }
  return r;
}

absl::StatusOr<std::unique_ptr<ImageReader>> OpenRootfsImageReader(
    const std::string& dir, const RootfsImageOptions& options) {
  return RootfsImageReader::Open(dir, options);
}

}  // namespace lazypull
