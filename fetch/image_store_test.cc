// Image locations, OCI layouts (fetch/oci_layout.h) and the registry write
// side, through ImageReader / ImageWriter, against Debian's docker-registry
// on 127.0.0.1 (plain HTTP; TLS with HTTP/2 and htpasswd Basic auth; JWT
// token auth with fetch/testing/token_server).
#include "fetch/image_store.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "core/status_macros.h"
#include "core/testing/tar_builder.h"
#include "fetch/curl_http.h"
#include "fetch/oci_layout.h"
#include "fetch/testing/oci_image.h"
#include "fetch/testing/registry_fixture.h"
#include "fetch/testing/token_server.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using testing::OciLayout;
using testing::RegistryServer;
using testing::RegistryServerOptions;
using testing::TarBuilder;
using testing::TestDescriptor;
using testing::TestDir;
using testing::TestImage;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (struct dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string LayerTar(const std::string& name, const std::string& content) {
  TarBuilder b;
  b.File(name, content);
  return b.Finish();
}

// Bytes that do not compress and differ per seed.
std::string Noise(size_t n, uint64_t seed) {
  std::string s(n, '\0');
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>(x);
  }
  return s;
}

Descriptor Desc(const std::string& media_type, const std::string& bytes) {
  Descriptor d;
  d.media_type = media_type;
  d.digest = Sha256::Of(bytes);
  d.size = static_cast<int64_t>(bytes.size());
  return d;
}

Descriptor FromTest(const TestDescriptor& t) {
  Descriptor d;
  d.media_type = t.media_type;
  d.digest = t.digest;
  d.size = t.size;
  return d;
}

std::string DescJson(const Descriptor& d) {
  return absl::StrCat("{\"mediaType\":\"", d.media_type, "\",\"digest\":\"",
                      d.digest.ToString(), "\",\"size\":", d.size, "}");
}

std::string ManifestJson(const Descriptor& config,
                         const std::vector<Descriptor>& layers) {
  std::vector<std::string> l;
  for (const Descriptor& d : layers) l.push_back(DescJson(d));
  return absl::StrCat("{\"schemaVersion\":2,\"mediaType\":\"", kOciManifestType,
                      "\",\"config\":", DescJson(config), ",\"layers\":[",
                      absl::StrJoin(l, ","), "]}");
}

absl::StatusOr<std::string> ReadStream(ByteStream* s) {
  std::string out;
  while (true) {
    ASSIGN_OR_RETURN(absl::string_view p, s->Read(100000));
    if (p.empty()) return out;
    out.append(p.data(), p.size());
  }
}

struct CopyStats {
  int uploaded = 0;
  int skipped = 0;
};

// What the converter will do, minus the conversion: every blob the
// destination lacks (layers through a file), manifests children first, then
// the tag.
absl::Status CopyManifest(ImageReader* src, ImageWriter* dst,
                          const Descriptor& md, const std::string& bytes,
                          const std::string& tmp, CopyStats* stats) {
  ASSIGN_OR_RETURN(ImageManifest m, ParseImageManifest(bytes));
  ASSIGN_OR_RETURN(bool have, dst->HasBlob(m.config));
  if (have) {
    ++stats->skipped;
  } else {
    ASSIGN_OR_RETURN(std::string config, src->Blob(m.config));
    RETURN_IF_ERROR(dst->PutBlob(m.config, config));
    ++stats->uploaded;
  }
  for (const Descriptor& l : m.layers) {
    ASSIGN_OR_RETURN(have, dst->HasBlob(l));
    if (have) {
      ++stats->skipped;
      continue;
    }
    ASSIGN_OR_RETURN(std::unique_ptr<ByteStream> s, src->OpenBlob(l));
    ASSIGN_OR_RETURN(std::string data, ReadStream(s.get()));
    const std::string path = tmp + "/" + l.digest.Hex();
    WriteFile(path, data);
    RETURN_IF_ERROR(dst->PutBlobFile(l, path));
    unlink(path.c_str());
    ++stats->uploaded;
  }
  return dst->PutManifest(md, bytes);
}

absl::Status CopyImage(ImageReader* src, ImageWriter* dst,
                       const std::string& tmp, CopyStats* stats) {
  ASSIGN_OR_RETURN(FetchedManifest root, src->Root());
  Descriptor rd = Desc(root.content_type, root.bytes);
  if (root.kind == ManifestKind::kIndex) {
    ASSIGN_OR_RETURN(ImageIndex idx, ParseImageIndex(root.bytes));
    for (const Descriptor& d : idx.manifests) {
      ASSIGN_OR_RETURN(FetchedManifest m, src->Manifest(d));
      RETURN_IF_ERROR(CopyManifest(src, dst, d, m.bytes, tmp, stats));
    }
    RETURN_IF_ERROR(dst->PutManifest(rd, root.bytes));
  } else {
    RETURN_IF_ERROR(CopyManifest(src, dst, rd, root.bytes, tmp, stats));
  }
  return dst->Tag(rd, root.bytes);
}

// ---------------------------------------------------------------------------
// Locations.

TEST(ImageLocationTest, ParsesLayoutsAndReferences) {
  struct Case {
    std::string text;
    ImageLocation::Kind kind;
    std::string dir, tag, reference, string;
  };
  const ImageLocation::Kind oci = ImageLocation::Kind::kOciLayout;
  const ImageLocation::Kind reg = ImageLocation::Kind::kRegistry;
  const std::string dg = "sha256:" + std::string(64, 'a');
  const std::vector<Case> cases = {
      {"oci:/tmp/img:v1", oci, "/tmp/img", "v1", "", "oci:/tmp/img:v1"},
      {"oci:/tmp/img", oci, "/tmp/img", "", "", "oci:/tmp/img"},
      {"oci:rel/dir:1.0_rc-2", oci, "rel/dir", "1.0_rc-2", "",
       "oci:rel/dir:1.0_rc-2"},
      // The last ':' ends the directory.
      {"oci:/a:b:c", oci, "/a:b", "c", "", "oci:/a:b:c"},
      {"oci:/a:b", oci, "/a", "b", "", "oci:/a:b"},
      {"oci:/a:b:", oci, "/a:b", "", "", "oci:/a:b:"},
      {"docker://127.0.0.1:5000/team/app:v1", reg, "", "",
       "127.0.0.1:5000/team/app:v1", "docker://127.0.0.1:5000/team/app:v1"},
      {"127.0.0.1:5000/team/app:v1", reg, "", "", "127.0.0.1:5000/team/app:v1",
       "docker://127.0.0.1:5000/team/app:v1"},
      {"alpine", reg, "", "", "alpine", "docker://alpine"},
      {"localhost:5000/app@" + dg, reg, "", "", "localhost:5000/app@" + dg,
       "docker://localhost:5000/app@" + dg},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    auto loc = ImageLocation::Parse(c.text);
    ASSERT_TRUE(loc.ok()) << loc.status();
    EXPECT_EQ(loc->kind, c.kind);
    EXPECT_EQ(loc->dir, c.dir);
    EXPECT_EQ(loc->tag, c.tag);
    EXPECT_EQ(loc->reference, c.reference);
    EXPECT_EQ(loc->String(), c.string);
    auto again = ImageLocation::Parse(loc->String());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->kind, loc->kind);
    EXPECT_EQ(again->dir, loc->dir);
    EXPECT_EQ(again->tag, loc->tag);
    EXPECT_EQ(again->reference, loc->reference);
  }
}

TEST(ImageLocationTest, RefusesBadLocations) {
  struct Case {
    std::string text, says;
  };
  const std::vector<Case> cases = {
      {"", "neither"},
      {"oci:", "no directory"},
      {"oci::v1", "no directory"},
      {"oci:/x/y:a/b", "tag \"a/b\""},
      {"oci:/x:t@g", "tag \"t@g\""},
      {"docker://", "neither"},
      {"docker://Upper/Case", "neither"},
      {"docker:alpine", "transport \"docker:\""},
      {"dir:/tmp/x", "transport \"dir:\""},
      {"docker-archive:/tmp/x.tar", "transport \"docker-archive:\""},
      {"oci-archive:/tmp/x.tar:v1", "transport \"oci-archive:\""},
      {"containers-storage:alpine", "not supported"},
      {"not a reference", "neither"},
  };
  for (const Case& c : cases) {
    auto loc = ImageLocation::Parse(c.text);
    ASSERT_FALSE(loc.ok()) << c.text;
    EXPECT_EQ(loc.status().code(), absl::StatusCode::kInvalidArgument)
        << loc.status();
    EXPECT_TRUE(absl::StrContains(loc.status().message(), c.says))
        << c.text << ": " << loc.status();
  }
}

// ---------------------------------------------------------------------------
// OCI layouts.

class LayoutStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<ImageWriter> Writer(const std::string& loc) {
    auto l = ImageLocation::Parse(loc);
    EXPECT_TRUE(l.ok()) << l.status();
    auto w = OpenImageWriter(*l, opts_);
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *std::move(w) : nullptr;
  }
  absl::StatusOr<std::unique_ptr<ImageReader>> Reader(const std::string& loc) {
    auto l = ImageLocation::Parse(loc);
    EXPECT_TRUE(l.ok()) << l.status();
    return OpenImageReader(*l, opts_);
  }
  // Writes a one-layer image (config, layer from a file, manifest) and
  // names it with the writer's tag.
  Descriptor WriteImage(ImageWriter* w, const std::string& seed) {
    const std::string layer = Noise(300000, std::hash<std::string>()(seed));
    const std::string layer_file = TestDir("files") + "/layer-" + seed;
    WriteFile(layer_file, layer);
    Descriptor ld = Desc("application/vnd.oci.image.layer.v1.tar", layer);
    const std::string config = absl::StrCat(
        "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":"
        "\"layers\",\"diff_ids\":[\"",
        ld.digest.ToString(), "\"]},\"seed\":\"", seed, "\"}");
    Descriptor cd = Desc("application/vnd.oci.image.config.v1+json", config);
    auto has = w->HasBlob(ld);
    EXPECT_TRUE(has.ok() && !*has);
    EXPECT_TRUE(w->PutBlob(cd, config).ok());
    absl::Status st = w->PutBlobFile(ld, layer_file);
    EXPECT_TRUE(st.ok()) << st;
    has = w->HasBlob(ld);
    EXPECT_TRUE(has.ok() && *has);
    const std::string manifest = ManifestJson(cd, {ld});
    Descriptor md = Desc(kOciManifestType, manifest);
    EXPECT_TRUE(w->PutManifest(md, manifest).ok());
    st = w->Tag(md, manifest);
    EXPECT_TRUE(st.ok()) << st;
    blobs_[md.digest.ToString()] = manifest;
    blobs_[cd.digest.ToString()] = config;
    blobs_[ld.digest.ToString()] = layer;
    layer_of_[md.digest.ToString()] = ld;
    config_of_[md.digest.ToString()] = cd;
    return md;
  }
  // Reads the image back through a reader and compares every byte.
  void CheckImage(const std::string& loc, const Descriptor& md) {
    SCOPED_TRACE(loc);
    auto r = Reader(loc);
    ASSERT_TRUE(r.ok()) << r.status();
    auto root = (*r)->Root();
    ASSERT_TRUE(root.ok()) << root.status();
    EXPECT_EQ(root->digest, md.digest);
    EXPECT_EQ(root->bytes, blobs_[md.digest.ToString()]);
    EXPECT_EQ(root->kind, ManifestKind::kManifest);
    EXPECT_EQ(root->content_type, kOciManifestType);
    const Descriptor& cd = config_of_[md.digest.ToString()];
    auto config = (*r)->Blob(cd);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(*config, blobs_[cd.digest.ToString()]);
    const Descriptor& ld = layer_of_[md.digest.ToString()];
    auto s = (*r)->OpenBlob(ld);
    ASSERT_TRUE(s.ok()) << s.status();
    auto data = ReadStream(s->get());
    ASSERT_TRUE(data.ok()) << data.status();
    EXPECT_TRUE(*data == blobs_[ld.digest.ToString()]);
  }
  // ref.name of each index.json entry ("" untagged) -> digest.
  std::vector<std::pair<std::string, std::string>> Index(
      const std::string& dir) {
    auto l = OciImageLayout::Open(dir);
    EXPECT_TRUE(l.ok()) << l.status();
    std::vector<std::pair<std::string, std::string>> out;
    if (!l.ok()) return out;
    auto entries = l->Entries();
    EXPECT_TRUE(entries.ok()) << entries.status();
    for (const Descriptor& d : *entries) {
      auto it = d.annotations.find(kOciRefNameAnnotation);
      out.emplace_back(it == d.annotations.end() ? "" : it->second,
                       d.digest.ToString());
    }
    return out;
  }

  RegistryOptions opts_;
  std::map<std::string, std::string> blobs_;
  std::map<std::string, Descriptor> layer_of_, config_of_;
};

TEST_F(LayoutStoreTest, WritesReadsAndReplacesTags) {
  // Created as needed, parents included.
  const std::string dir = TestDir("out") + "/nested/layout";
  auto w1 = Writer("oci:" + dir + ":v1");
  ASSERT_NE(w1, nullptr);
  EXPECT_EQ(w1->Describe(), "oci:" + dir + ":v1");
  EXPECT_EQ(ReadFile(dir + "/oci-layout"),
            "{\"imageLayoutVersion\":\"1.0.0\"}");
  EXPECT_TRUE(Index(dir).empty());
  auto mounted = w1->MountBlob(Desc("x", "y"), "other/repo");
  ASSERT_TRUE(mounted.ok());
  EXPECT_FALSE(*mounted);

  Descriptor m1 = WriteImage(w1.get(), "one");
  using Entries = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(Index(dir), (Entries{{"v1", m1.digest.ToString()}}));
  // Blobs are where the spec puts them; no temporary file is left.
  EXPECT_EQ(ReadFile(dir + "/blobs/sha256/" + m1.digest.Hex()),
            blobs_[m1.digest.ToString()]);
  EXPECT_EQ(ListDir(dir),
            (std::vector<std::string>{"blobs", "index.json", "oci-layout"}));
  EXPECT_EQ(ListDir(dir + "/blobs/sha256").size(), 3u);
  CheckImage("oci:" + dir + ":v1", m1);
  CheckImage("oci:" + dir, m1);  // the only entry

  // Fields and entries lazypull does not know survive a rewrite.
  std::string index = ReadFile(dir + "/index.json");
  ASSERT_EQ(index.back(), '}');
  index.pop_back();
  index += ",\"annotations\":{\"keep\":\"me\"}}";
  WriteFile(dir + "/index.json", index);

  auto w2 = Writer("oci:" + dir + ":v2");
  Descriptor m2 = WriteImage(w2.get(), "two");
  EXPECT_EQ(Index(dir), (Entries{{"v1", m1.digest.ToString()},
                                 {"v2", m2.digest.ToString()}}));
  CheckImage("oci:" + dir + ":v1", m1);
  CheckImage("oci:" + dir + ":v2", m2);

  // v1 now names the second image: its entry is replaced, v2's kept.
  auto again = w1->Tag(m2, blobs_[m2.digest.ToString()]);
  ASSERT_TRUE(again.ok()) << again;
  EXPECT_EQ(Index(dir), (Entries{{"v2", m2.digest.ToString()},
                                 {"v1", m2.digest.ToString()}}));
  CheckImage("oci:" + dir + ":v1", m2);
  EXPECT_TRUE(absl::StrContains(ReadFile(dir + "/index.json"),
                                "\"annotations\":{\"keep\":\"me\"}"));
  EXPECT_TRUE(
      absl::StartsWith(ReadFile(dir + "/index.json"), "{\"schemaVersion\":2,"));

  // Without a tag a multi-entry layout is refused, naming its tags.
  auto r = Reader("oci:" + dir);
  ASSERT_TRUE(r.ok()) << r.status();
  auto root = (*r)->Root();
  ASSERT_FALSE(root.ok());
  EXPECT_EQ(root.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(root.status().message(), "v1, v2") ||
              absl::StrContains(root.status().message(), "v2, v1"))
      << root.status();
  // An unknown tag: NotFound, listing what there is.
  r = Reader("oci:" + dir + ":nope");
  ASSERT_TRUE(r.ok()) << r.status();
  root = (*r)->Root();
  EXPECT_EQ(root.status().code(), absl::StatusCode::kNotFound) << root.status();
  EXPECT_TRUE(absl::StrContains(root.status().message(), "v2"))
      << root.status();

  // Untagged writes append one entry, once.
  auto w3 = Writer("oci:" + dir);
  ASSERT_TRUE(w3->Tag(m1, blobs_[m1.digest.ToString()]).ok());
  ASSERT_TRUE(w3->Tag(m1, blobs_[m1.digest.ToString()]).ok());
  EXPECT_EQ(Index(dir), (Entries{{"v2", m2.digest.ToString()},
                                 {"v1", m2.digest.ToString()},
                                 {"", m1.digest.ToString()}}));
}

TEST_F(LayoutStoreTest, EveryByteIsVerified) {
  const std::string dir = TestDir("layout");
  auto w = Writer("oci:" + dir + ":v1");
  ASSERT_NE(w, nullptr);
  Descriptor m = WriteImage(w.get(), "verify");
  const Descriptor ld = layer_of_[m.digest.ToString()];
  const std::string layer = blobs_[ld.digest.ToString()];

  // Wrong content is refused and nothing is stored.
  Descriptor other = Desc("application/octet-stream", "the real bytes");
  absl::Status st = w->PutBlob(other, "other bytes");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  const std::string wrong_file = TestDir("files") + "/wrong";
  WriteFile(wrong_file, "the real byteZ");
  st = w->PutBlobFile(other, wrong_file);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), wrong_file)) << st;
  EXPECT_FALSE(*w->HasBlob(other));
  EXPECT_EQ(access((dir + "/blobs/sha256/" + other.digest.Hex()).c_str(), F_OK),
            -1);
  EXPECT_EQ(ListDir(dir),
            (std::vector<std::string>{"blobs", "index.json", "oci-layout"}));
  st = w->PutBlobFile(other, "/nonexistent/file");
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound) << st;
  // A manifest whose bytes are not its descriptor's.
  st = w->PutManifest(m, "{}");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;

  // A layer corrupted in place (same size): the stream's end says so, the
  // writer no longer counts it as present and rewrites it.
  const std::string path = dir + "/blobs/sha256/" + ld.digest.Hex();
  std::string bad = layer;
  bad[1000] ^= 1;
  WriteFile(path, bad);
  auto r = Reader("oci:" + dir + ":v1");
  ASSERT_TRUE(r.ok());
  auto s = (*r)->OpenBlob(ld);
  ASSERT_TRUE(s.ok()) << s.status();
  auto data = ReadStream(s->get());
  ASSERT_FALSE(data.ok());
  EXPECT_EQ(data.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(absl::StrContains(data.status().message(), "corrupt"))
      << data.status();
  EXPECT_FALSE(*w->HasBlob(ld));
  const std::string good_file = TestDir("files") + "/good";
  WriteFile(good_file, layer);
  ASSERT_TRUE(w->PutBlobFile(ld, good_file).ok());
  EXPECT_TRUE(*w->HasBlob(ld));
  CheckImage("oci:" + dir + ":v1", m);

  // A truncated config, a corrupt manifest.
  const Descriptor cd = config_of_[m.digest.ToString()];
  WriteFile(dir + "/blobs/sha256/" + cd.digest.Hex(), "{}");
  auto config = (*r)->Blob(cd);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kDataLoss)
      << config.status();
  std::string mbytes = blobs_[m.digest.ToString()];
  mbytes[mbytes.size() - 2] = ' ';
  WriteFile(dir + "/blobs/sha256/" + m.digest.Hex(), mbytes);
  auto root = (*r)->Root();
  EXPECT_EQ(root.status().code(), absl::StatusCode::kDataLoss) << root.status();

  // Not a layout at all.
  auto nl = Reader("oci:" + TestDir("not-a-layout"));
  ASSERT_FALSE(nl.ok());
  EXPECT_EQ(nl.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(nl.status().message(),
                                "not an OCI image "
                                "layout"))
      << nl.status();
}

// ---------------------------------------------------------------------------
// Registries.

// Records what goes through the transport (and what came back).
class RecordingTransport : public HttpTransport {
 public:
  struct Call {
    std::string method, url;
    bool body_file = false;
    size_t body_size = 0;
    int status = 0;
    HttpVersion version = HttpVersion::kUnknown;
  };
  explicit RecordingTransport(HttpTransport* inner) : inner_(inner) {}

  absl::StatusOr<HttpResponse> Fetch(const HttpRequest& req,
                                     size_t max_body) override {
    auto r = inner_->Fetch(req, max_body);
    Record(req, r.ok() ? r->status : 0, r.ok() ? r->version : HttpVersion{});
    return r;
  }
  absl::StatusOr<std::unique_ptr<HttpBodyReader>> Open(
      const HttpRequest& req) override {
    auto r = inner_->Open(req);
    Record(req, r.ok() ? (*r)->response().status : 0,
           r.ok() ? (*r)->response().version : HttpVersion{});
    return r;
  }
  std::vector<Call> calls() const {
    absl::MutexLock l(&mu_);
    return calls_;
  }
  void Clear() {
    absl::MutexLock l(&mu_);
    calls_.clear();
  }
  // "METHOD path-without-query -> status", one per call.
  std::vector<std::string> Summary() const {
    std::vector<std::string> out;
    for (const Call& c : calls()) {
      std::string path = c.url.substr(0, c.url.find('?'));
      path = path.substr(path.find("/v2/"));
      out.push_back(absl::StrCat(c.method, " ", path, " -> ", c.status));
    }
    return out;
  }

 private:
  void Record(const HttpRequest& req, int status, HttpVersion v) {
    absl::MutexLock l(&mu_);
    calls_.push_back({req.method, req.url, !req.body_file.empty(),
                      req.body.size(), status, v});
  }
  HttpTransport* const inner_;
  mutable absl::Mutex mu_;
  std::vector<Call> calls_;
};

// Writes $dir/config.json with Docker's "auths" for `host`.
std::string WriteDockerConfig(const std::string& dir, const std::string& host,
                              const std::string& user,
                              const std::string& pass) {
  std::ofstream(dir + "/config.json")
      << "{\"auths\":{\"" << host << "\":{\"auth\":\""
      << absl::Base64Escape(user + ":" + pass) << "\"}}}";
  return dir;
}

class RegistryStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto h = CurlHttpTransport::Create();
    ASSERT_TRUE(h.ok());
    curl_ = *std::move(h);
    http_ = std::make_unique<RecordingTransport>(curl_.get());
    opts_.http = http_.get();
    opts_.hosts.hosts_dir = TestDir("no-hosts-dir");
    opts_.hosts.plain_http = true;
    opts_.retry.initial_backoff = absl::Milliseconds(5);
    tmp_ = TestDir("tmp");
  }

  std::unique_ptr<RegistryServer> StartRegistry(RegistryServerOptions o = {}) {
    if (o.work_dir.empty()) o.work_dir = TestDir("registry");
    auto s = RegistryServer::Start(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  std::unique_ptr<ImageWriter> Writer(const std::string& loc) {
    auto l = ImageLocation::Parse(loc);
    EXPECT_TRUE(l.ok()) << l.status();
    auto w = OpenImageWriter(*l, opts_);
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *std::move(w) : nullptr;
  }
  std::unique_ptr<ImageReader> Reader(const std::string& loc) {
    auto l = ImageLocation::Parse(loc);
    EXPECT_TRUE(l.ok()) << l.status();
    auto r = OpenImageReader(*l, opts_);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : nullptr;
  }

  // A layout with image "v1" (two gzip layers) and "multi" (an index of
  // amd64 and arm64 images).
  struct Source {
    std::string dir;
    TestImage v1, amd, arm;
    TestDescriptor index;
  };
  Source MakeSource() {
    Source s;
    s.dir = TestDir("source");
    auto layout = OciLayout::Create(s.dir);
    EXPECT_TRUE(layout.ok());
    s.v1 = *layout->AddImage(
        {LayerTar("a", Noise(200000, 1)), LayerTar("b", Noise(100000, 2))});
    s.amd = *layout->AddImage({LayerTar("amd", Noise(50000, 3))});
    s.arm =
        *layout->AddImage({LayerTar("arm", Noise(50000, 4))}, "linux/arm64/v8");
    s.index = *layout->AddIndex({s.amd.manifest, s.arm.manifest});
    EXPECT_TRUE(layout->Tag("v1", s.v1.manifest).ok());
    EXPECT_TRUE(layout->Tag("multi", s.index).ok());
    return s;
  }

  // Every blob and manifest the image at `loc` reaches, read through a
  // reader: digest -> bytes.
  std::map<std::string, std::string> ReadAllOf(const std::string& loc) {
    std::map<std::string, std::string> out;
    auto r = Reader(loc);
    if (r == nullptr) return out;
    auto root = r->Root();
    EXPECT_TRUE(root.ok()) << root.status();
    if (!root.ok()) return out;
    out["root"] = root->bytes;
    std::vector<std::pair<Descriptor, std::string>> manifests;
    if (root->kind == ManifestKind::kIndex) {
      auto idx = ParseImageIndex(root->bytes);
      for (const Descriptor& d : idx->manifests) {
        auto m = r->Manifest(d);
        EXPECT_TRUE(m.ok()) << m.status();
        if (m.ok()) manifests.emplace_back(d, m->bytes);
      }
    } else {
      manifests.emplace_back(Desc(root->content_type, root->bytes),
                             root->bytes);
    }
    for (const auto& [d, bytes] : manifests) {
      out[d.digest.ToString()] = bytes;
      auto m = ParseImageManifest(bytes);
      auto c = r->Blob(m->config);
      EXPECT_TRUE(c.ok()) << c.status();
      if (c.ok()) out[m->config.digest.ToString()] = *c;
      for (const Descriptor& l : m->layers) {
        auto s = r->OpenBlob(l);
        EXPECT_TRUE(s.ok()) << s.status();
        if (!s.ok()) continue;
        auto data = ReadStream(s->get());
        EXPECT_TRUE(data.ok()) << data.status();
        if (data.ok()) out[l.digest.ToString()] = *data;
      }
    }
    return out;
  }

  std::unique_ptr<CurlHttpTransport> curl_;
  std::unique_ptr<RecordingTransport> http_;
  RegistryOptions opts_;
  std::string tmp_;
};

TEST_F(RegistryStoreTest, CopiesLayoutToRegistryAndBack) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  Source src = MakeSource();
  for (const std::string& tag : std::vector<std::string>{"v1", "multi"}) {
    SCOPED_TRACE(tag);
    const std::string from = absl::StrCat("oci:", src.dir, ":", tag);
    const std::string to = absl::StrCat(reg->host(), "/team/app:", tag);
    auto r = Reader(from);
    auto w = Writer(to);
    ASSERT_NE(r, nullptr);
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->Describe(), to);
    CopyStats stats;
    absl::Status st = CopyImage(r.get(), w.get(), tmp_, &stats);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(stats.skipped, 0);
    // Byte for byte what the layout holds, read back through the registry.
    auto want = ReadAllOf(from);
    auto got = ReadAllOf(to);
    EXPECT_EQ(want.size(), tag == "v1" ? 5u : 7u);
    EXPECT_TRUE(want == got);
    // And as skopeo sees it.
    std::string raw;
    st = testing::RunProcess(
        {"skopeo", "inspect", "--tls-verify=false", "--raw", "docker://" + to},
        &raw);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_EQ(raw, want["root"]);
    // Pushing again skips every blob.
    CopyStats again;
    ASSERT_TRUE(CopyImage(r.get(), w.get(), tmp_, &again).ok());
    EXPECT_EQ(again.uploaded, 0);
    EXPECT_EQ(again.skipped, stats.uploaded);
  }
  // No request went anywhere but the registry, and only the PUTs that
  // close uploads carried a file.
  for (const auto& c : http_->calls()) {
    EXPECT_TRUE(absl::StartsWith(c.url, reg->url())) << c.url;
    if (c.body_file) {
      EXPECT_EQ(c.method, "PUT");
      EXPECT_TRUE(absl::StrContains(c.url, "/blobs/uploads/")) << c.url;
      EXPECT_TRUE(absl::StrContains(c.url, "digest=sha256%3A")) << c.url;
    }
  }

  // Registry -> a new layout, by digest too.
  const std::string back = TestDir("back");
  auto r = Reader(reg->host() + "/team/app@" + src.index.digest.ToString());
  auto w = Writer("oci:" + back + ":copied");
  CopyStats stats;
  absl::Status st = CopyImage(r.get(), w.get(), tmp_, &stats);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(ReadAllOf("oci:" + src.dir + ":multi") ==
              ReadAllOf("oci:" + back + ":copied"));
}

TEST_F(RegistryStoreTest, HasBlobAndCrossRepositoryMounts) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  Source src = MakeSource();
  auto r = Reader("oci:" + src.dir + ":v1");
  auto w = Writer(reg->host() + "/a/src:v1");
  CopyStats stats;
  ASSERT_TRUE(CopyImage(r.get(), w.get(), tmp_, &stats).ok());
  const Descriptor l0 = FromTest(src.v1.layers[0]);
  const Descriptor l1 = FromTest(src.v1.layers[1]);
  EXPECT_TRUE(*w->HasBlob(l0));
  const Descriptor absent = Desc("application/octet-stream", "never pushed");
  auto has = w->HasBlob(absent);
  ASSERT_TRUE(has.ok()) << has.status();
  EXPECT_FALSE(*has);

  // Into a repository that does not exist yet, from one that has the blob:
  // mounted (repositories are created by their first blob).
  auto dst = Writer(reg->host() + "/b/dst:v1");
  EXPECT_FALSE(*dst->HasBlob(l0));
  http_->Clear();
  auto mounted = dst->MountBlob(l0, "a/src");
  ASSERT_TRUE(mounted.ok()) << mounted.status();
  EXPECT_TRUE(*mounted);
  EXPECT_EQ(http_->Summary(),
            std::vector<std::string>{"POST /v2/b/dst/blobs/uploads/ -> 201"});
  EXPECT_TRUE(*dst->HasBlob(l0));

  // From a repository that does not exist: declined; the upload then uses
  // the session the registry opened (no second POST).
  mounted = dst->MountBlob(l1, "no/such-repo");
  ASSERT_TRUE(mounted.ok()) << mounted.status();
  EXPECT_FALSE(*mounted);
  auto layer1 = r->OpenBlob(l1);
  ASSERT_TRUE(layer1.ok());
  const std::string l1_bytes = *ReadStream(layer1->get());
  http_->Clear();
  absl::Status st = dst->PutBlob(l1, l1_bytes);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(http_->Summary().size(), 1u)
      << absl::StrJoin(http_->Summary(), "\n");
  EXPECT_EQ(http_->calls()[0].method, "PUT");
  EXPECT_TRUE(*dst->HasBlob(l1));

  // From a repository that exists but lacks the blob: declined too.
  const std::string fresh = "a blob only pushed to c/dst";
  const Descriptor fd = Desc("application/octet-stream", fresh);
  auto c = Writer(reg->host() + "/c/dst:v1");
  mounted = c->MountBlob(fd, "a/src");
  ASSERT_TRUE(mounted.ok()) << mounted.status();
  EXPECT_FALSE(*mounted);
  ASSERT_TRUE(c->PutBlob(fd, fresh).ok());
  EXPECT_TRUE(*c->HasBlob(fd));
  EXPECT_FALSE(*w->HasBlob(fd)) << "blobs belong to their repository";
}

TEST_F(RegistryStoreTest, BigBlobIsStreamedFromItsFile) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  const std::string data = Noise(12 << 20, 42);
  const std::string path = tmp_ + "/big";
  WriteFile(path, data);
  const Descriptor d = Desc("application/vnd.oci.image.layer.v1.tar", data);
  auto w = Writer(reg->host() + "/big/blob:v1");
  http_->Clear();
  absl::Status st = w->PutBlobFile(d, path);
  ASSERT_TRUE(st.ok()) << st;
  auto calls = http_->calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].method, "POST");
  EXPECT_EQ(calls[1].method, "PUT");
  EXPECT_TRUE(calls[1].body_file);
  EXPECT_EQ(calls[1].body_size, 0u) << "the body is not in memory";
  EXPECT_EQ(calls[1].status, 201);
  // The registry stored exactly the file.
  EXPECT_TRUE(ReadFile(reg->BlobDataPath(d.digest)) == data);
  auto r = Reader(reg->host() + "/big/blob:v1");
  auto s = r->OpenBlob(d);
  ASSERT_TRUE(s.ok()) << s.status();
  auto back = ReadStream(s->get());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == data);
}

TEST_F(RegistryStoreTest, RegistryRefusalsAreClear) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  auto w = Writer(reg->host() + "/bad/push:v1");
  ASSERT_NE(w, nullptr);

  // A file whose content is not the descriptor's: the registry's
  // DIGEST_INVALID, and the blob is not there.
  const std::string path = tmp_ + "/wrong";
  WriteFile(path, Noise(100000, 7));
  Descriptor d = Desc("application/octet-stream", Noise(100000, 8));
  absl::Status st = w->PutBlobFile(d, path);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "DIGEST_INVALID")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), d.digest.ToString())) << st;
  EXPECT_FALSE(*w->HasBlob(d));

  // A file of the wrong size never leaves the machine.
  d.size += 1;
  http_->Clear();
  st = w->PutBlobFile(d, path);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "100000 bytes")) << st;
  EXPECT_TRUE(http_->calls().empty());

  // A manifest whose config and layer were never pushed.
  const Descriptor config = Desc("application/vnd.oci.image.config.v1+json",
                                 "{\"rootfs\":{\"diff_ids\":[]}}");
  const Descriptor layer =
      Desc("application/vnd.oci.image.layer.v1.tar+gzip", "missing layer");
  const std::string manifest = ManifestJson(config, {layer});
  const Descriptor md = Desc(kOciManifestType, manifest);
  st = w->PutManifest(md, manifest);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "MANIFEST_BLOB_UNKNOWN")) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), md.digest.ToString())) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), reg->host() + "/bad/push")) << st;
  // Both missing blobs are named.
  EXPECT_TRUE(absl::StrContains(st.message(), config.digest.ToString()) &&
              absl::StrContains(st.message(), layer.digest.ToString()))
      << st;

  // A location naming a digest accepts only that image.
  auto by_digest =
      Writer(reg->host() + "/bad/push@" + config.digest.ToString());
  st = by_digest->Tag(md, manifest);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
}

TEST_F(RegistryStoreTest, PushOverTlsWithBasicAuthUsesHttp2) {
  const std::string dir = TestDir("auth");
  std::string htpasswd;
  ASSERT_TRUE(
      testing::RunProcess({"htpasswd", "-Bbn", "alice", "s3cret"}, &htpasswd)
          .ok());
  WriteFile(dir + "/htpasswd", htpasswd);
  RegistryServerOptions ro;
  ro.tls = true;
  ro.htpasswd = dir + "/htpasswd";
  auto reg = StartRegistry(ro);
  ASSERT_NE(reg, nullptr);
  opts_.hosts.plain_http = false;
  opts_.hosts.ca_files = {reg->ca_file()};
  Source src = MakeSource();
  const std::string to = reg->host() + "/private/app:v1";

  // No credentials: a message saying where to put them.
  CredentialStore::Options none;
  none.docker_config_dir = TestDir("empty-config");
  none.podman_auth_file = "/nonexistent";
  CredentialStore empty(none);
  opts_.credentials = &empty;
  auto r = Reader("oci:" + src.dir + ":v1");
  CopyStats stats;
  absl::Status st = CopyImage(r.get(), Writer(to).get(), tmp_, &stats);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "config.json")) << st;

  CredentialStore::Options co;
  co.docker_config_dir =
      WriteDockerConfig(TestDir("docker"), reg->host(), "alice", "s3cret");
  co.podman_auth_file = "/nonexistent";
  CredentialStore store(co);
  opts_.credentials = &store;
  http_->Clear();
  st = CopyImage(r.get(), Writer(to).get(), tmp_, &stats);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(ReadAllOf("oci:" + src.dir + ":v1") == ReadAllOf(to));
  int file_puts = 0;
  for (const auto& c : http_->calls()) {
    if (c.status == 401) continue;
    EXPECT_EQ(c.version, HttpVersion::kHttp2) << c.method << " " << c.url;
    if (c.body_file) ++file_puts;
  }
  EXPECT_EQ(file_puts, 2);
  // The registry saw our uploads as HTTP/2 too.
  int puts = 0;
  for (absl::string_view line : absl::StrSplit(reg->Log(), '\n')) {
    if (!absl::StrContains(line, "\"lazypull/") ||
        !absl::StrContains(line, "\"PUT ")) {
      continue;
    }
    ++puts;
    EXPECT_TRUE(absl::StrContains(line, " HTTP/2.0\"")) << line;
  }
  EXPECT_GE(puts, 5);  // config, two layers, manifest, tag
}

class TokenStoreTest : public RegistryStoreTest {
 protected:
  void SetUp() override {
    RegistryStoreTest::SetUp();
    const std::string dir = TestDir("token");
    ASSERT_TRUE(testing::MakeSelfSignedCert(dir + "/signer.crt",
                                            dir + "/signer.key", "signer")
                    .ok());
    testing::TokenServerOptions to;
    to.key_file = dir + "/signer.key";
    to.cert_file = dir + "/signer.crt";
    to.user = "bob";
    to.password = "hunter2";
    auto ts = testing::TokenServer::Start(to);
    ASSERT_TRUE(ts.ok()) << ts.status();
    tokens_ = *std::move(ts);
    RegistryServerOptions ro;
    ro.token = RegistryServerOptions::Token{tokens_->realm(), to.service,
                                            to.issuer, to.cert_file};
    reg_ = StartRegistry(ro);
    ASSERT_NE(reg_, nullptr);
    CredentialStore::Options co;
    co.docker_config_dir =
        WriteDockerConfig(TestDir("docker"), reg_->host(), "bob", "hunter2");
    co.podman_auth_file = "/nonexistent";
    creds_ = std::make_unique<CredentialStore>(co);
  }

  // The scope parameters of the last token request.
  std::vector<std::string> LastScopes() {
    auto reqs = tokens_->requests();
    return reqs.empty() ? std::vector<std::string>{}
                        : reqs.back().query_all("scope");
  }

  std::unique_ptr<testing::TokenServer> tokens_;
  std::unique_ptr<RegistryServer> reg_;
  std::unique_ptr<CredentialStore> creds_;
};

TEST_F(TokenStoreTest, PushesWithAPushScopedToken) {
  Source src = MakeSource();
  auto r = Reader("oci:" + src.dir + ":multi");

  // Anonymous pushes are refused by the token service, clearly.
  auto anon = Writer(reg_->host() + "/tok/app:multi");
  CopyStats stats;
  absl::Status st = CopyImage(r.get(), anon.get(), tmp_, &stats);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
  EXPECT_TRUE(absl::StrContains(st.message(), "anonymous")) << st;

  opts_.credentials = creds_.get();
  const int before = tokens_->issued();
  auto w = Writer(reg_->host() + "/tok/app:multi");
  st = CopyImage(r.get(), w.get(), tmp_, &stats);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(tokens_->issued(), before + 1) << "one token for the whole push";
  // Asked for pull,push first (the challenge's own scope may follow).
  ASSERT_FALSE(LastScopes().empty());
  EXPECT_EQ(LastScopes()[0], "repository:tok/app:pull,push");
  EXPECT_TRUE(ReadAllOf("oci:" + src.dir + ":multi") ==
              ReadAllOf(reg_->host() + "/tok/app:multi"));

  // A mount needs pull on the source repository too: the registry's
  // challenge asks for it and the new token carries both.
  auto other = Writer(reg_->host() + "/tok/other:v1");
  const Descriptor layer = FromTest(src.amd.layers[0]);
  auto mounted = other->MountBlob(layer, "tok/app");
  ASSERT_TRUE(mounted.ok()) << mounted.status();
  EXPECT_TRUE(*mounted);
  const std::string scopes = absl::StrJoin(LastScopes(), " ");
  EXPECT_TRUE(absl::StrContains(scopes, "repository:tok/app:pull")) << scopes;
  EXPECT_TRUE(absl::StrContains(scopes, "repository:tok/other:pull,push"))
      << scopes;
  EXPECT_TRUE(*other->HasBlob(layer));
}

}  // namespace
}  // namespace lazypull
