// ConvertImage against in-memory fakes of ImageReader / ImageWriter: every
// input compression (gzip, zstd, plain tar, eStargz, zstd:chunked), config
// and manifest bytes kept but for what must change, Docker and OCI media
// types, indexes (all platforms or one), prioritized files, skipping and
// mounting blobs, corrupt input, and `push DIR`'s rootfs reader.
#include "fetch/image_converter.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/decompressor.h"
#include "core/digest.h"
#include "core/layer_reader.h"
#include "core/layer_writer.h"
#include "core/memory_blob_source.h"
#include "core/tar_reader.h"
#include "core/testing/tar_builder.h"
#include "fetch/testing/oci_image.h"
#include "gtest/gtest.h"
#include "simdjson.h"

namespace lazypull {
namespace {

using testing::TarBuilder;

constexpr char kOciLayerGzip[] = "application/vnd.oci.image.layer.v1.tar+gzip";
constexpr char kOciLayerZstd[] = "application/vnd.oci.image.layer.v1.tar+zstd";
constexpr char kOciLayerTar[] = "application/vnd.oci.image.layer.v1.tar";
constexpr char kDockerLayerGzip[] =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
constexpr char kOciConfig[] = "application/vnd.oci.image.config.v1+json";
constexpr char kDockerConfig[] =
    "application/vnd.docker.container.image.v1+json";

// A verifying stream over stored bytes: the Read that reaches the end fails
// with DataLoss when the bytes are not the descriptor's (as BlobReader).
class CheckedStream : public ByteStream {
 public:
  CheckedStream(std::string data, Descriptor d)
      : data_(std::move(data)), d_(std::move(d)) {}
  absl::StatusOr<absl::string_view> Read(size_t n) override {
    n = std::min(n, size_t{1000});  // small reads: exercise the loops
    absl::string_view v = absl::string_view(data_).substr(pos_, n);
    pos_ += v.size();
    hash_.Update(v);
    if (pos_ == data_.size() && !checked_) {
      checked_ = true;
      if (hash_.Finish() != d_.digest ||
          data_.size() != static_cast<size_t>(d_.size)) {
        return absl::DataLossError(
            absl::StrCat("blob ", d_.digest.ToString(), " is corrupt"));
      }
    }
    return v;
  }

 private:
  std::string data_;
  Descriptor d_;
  size_t pos_ = 0;
  Sha256 hash_;
  bool checked_ = false;
};

// An image held in memory: blobs by digest (stored as given, so a test can
// store wrong bytes under a digest).
class FakeReader : public ImageReader {
 public:
  std::map<std::string, std::string> blobs;
  Descriptor root;
  std::string content_type_override;

  Descriptor Add(const std::string& media_type, const std::string& bytes) {
    Descriptor d;
    d.media_type = media_type;
    d.digest = Sha256::Of(bytes);
    d.size = static_cast<int64_t>(bytes.size());
    blobs[d.digest.ToString()] = bytes;
    return d;
  }

  absl::StatusOr<FetchedManifest> Root() override { return Manifest(root); }
  absl::StatusOr<FetchedManifest> Manifest(const Descriptor& d) override {
    auto it = blobs.find(d.digest.ToString());
    if (it == blobs.end()) return absl::NotFoundError("no manifest");
    FetchedManifest m;
    m.digest = d.digest;
    m.bytes = it->second;
    absl::StatusOr<ManifestKind> k = SniffManifestKind(m.bytes);
    if (!k.ok()) return k.status();
    m.kind = *k;
    m.content_type = d.media_type;
    return m;
  }
  absl::StatusOr<std::string> Blob(const Descriptor& d) override {
    auto it = blobs.find(d.digest.ToString());
    if (it == blobs.end()) return absl::NotFoundError("no blob");
    if (Sha256::Of(it->second) != d.digest) {
      return absl::DataLossError("corrupt blob");
    }
    ++blob_reads;
    return it->second;
  }
  absl::StatusOr<std::unique_ptr<ByteStream>> OpenBlob(
      const Descriptor& d) override {
    auto it = blobs.find(d.digest.ToString());
    if (it == blobs.end()) {
      return absl::NotFoundError(absl::StrCat("no blob ", d.digest.ToString()));
    }
    ++blob_reads;
    return std::unique_ptr<ByteStream>(new CheckedStream(it->second, d));
  }
  std::string Describe() const override { return "fake-source"; }

  int blob_reads = 0;
};

class FakeWriter : public ImageWriter {
 public:
  std::map<std::string, std::string> blobs;      // by digest
  std::map<std::string, std::string> manifests;  // by digest
  std::map<std::string, std::string> manifest_types;
  std::optional<Descriptor> tagged;
  std::string tagged_bytes;
  int puts = 0;
  std::set<std::string> mountable;  // digests MountBlob succeeds for
  std::vector<std::string> mount_calls;

  absl::StatusOr<bool> HasBlob(const Descriptor& d) override {
    return blobs.count(d.digest.ToString()) > 0;
  }
  absl::Status PutBlobFile(const Descriptor& d,
                           const std::string& path) override {
    std::ifstream f(path, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(f)),
                     std::istreambuf_iterator<char>());
    return PutBlob(d, data);
  }
  absl::Status PutBlob(const Descriptor& d, absl::string_view bytes) override {
    if (Sha256::Of(bytes) != d.digest ||
        bytes.size() != static_cast<size_t>(d.size)) {
      return absl::InvalidArgumentError("blob does not match its descriptor");
    }
    ++puts;
    blobs[d.digest.ToString()] = std::string(bytes);
    return absl::OkStatus();
  }
  absl::StatusOr<bool> MountBlob(const Descriptor& d,
                                 absl::string_view from_repo) override {
    mount_calls.push_back(absl::StrCat(from_repo, "@", d.digest.ToString()));
    if (!mountable.count(d.digest.ToString())) return false;
    blobs[d.digest.ToString()] = "mounted";
    return true;
  }
  absl::Status PutManifest(const Descriptor& d,
                           absl::string_view bytes) override {
    if (Sha256::Of(bytes) != d.digest) {
      return absl::InvalidArgumentError("manifest does not match");
    }
    manifests[d.digest.ToString()] = std::string(bytes);
    manifest_types[d.digest.ToString()] = d.media_type;
    return absl::OkStatus();
  }
  absl::Status Tag(const Descriptor& root, absl::string_view bytes) override {
    tagged = root;
    tagged_bytes = std::string(bytes);
    return absl::OkStatus();
  }
  std::string Describe() const override { return "fake-destination"; }

  const std::string& Blob(const Digest& d) { return blobs[d.ToString()]; }
};

// The whole decompressed content of a gzip / zstd blob.
std::string Decompress(Compression c, absl::string_view in) {
  std::unique_ptr<StreamDecompressor> d = StreamDecompressor::New(c);
  std::string out, buf(1 << 20, '\0');
  while (!in.empty()) {
    absl::StatusOr<StreamDecompressor::Result> r =
        d->Decompress(in, absl::MakeSpan(buf));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) break;
    in.remove_prefix(r->consumed);
    out.append(buf.data(), r->produced);
    if (r->consumed == 0 && r->produced == 0 && !r->frame_end) break;
  }
  return out;
}

// name -> content of the regular files (and names of the others) of a tar.
std::map<std::string, std::string> TarFiles(const std::string& tar) {
  std::map<std::string, std::string> out;
  MemoryByteStream in(tar);
  TarReader r(&in);
  TarHeader h;
  while (true) {
    absl::StatusOr<bool> more = r.Next(&h);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    std::string data;
    while (true) {
      absl::StatusOr<absl::string_view> d = r.ReadData(1 << 20);
      if (!d.ok() || d->empty()) break;
      data.append(d->data(), d->size());
    }
    out[CleanEntryName(h.name)] = h.type == TarType::kReg ? data : "<other>";
  }
  return out;
}

// The same without what a lazily-pullable layer adds.
std::map<std::string, std::string> Payload(
    std::map<std::string, std::string> files) {
  files.erase("stargz.index.json");
  files.erase(".prefetch.landmark");
  files.erase(".no.prefetch.landmark");
  return files;
}

std::string Json(const std::string& s) {
  std::string out;
  out.push_back('"');
  out += s;
  out.push_back('"');
  return out;
}

std::string DescJson(const Descriptor& d, const std::string& extra = "") {
  return absl::StrCat("{\"mediaType\":", Json(d.media_type),
                      ",\"digest\":", Json(d.digest.ToString()),
                      ",\"size\":", d.size, extra, "}");
}

struct SourceImage {
  std::vector<std::string> tars;  // uncompressed, bottom first
  std::vector<Descriptor> layers;
  std::vector<Digest> diff_ids;
  Descriptor config, manifest;
  std::string config_json, manifest_json;
};

std::string TarOf(int n, const std::string& arch) {
  TarBuilder b;
  b.Dir("./");
  b.File("arch", arch);
  b.Dir(absl::StrCat("dir", n, "/"));
  b.File(absl::StrCat("dir", n, "/file"), std::string(3000 + n, 'a' + n));
  b.File(absl::StrCat("top", n), absl::StrCat("layer ", n, "\n"));
  b.Symlink(absl::StrCat("link", n), "top0");
  if (n > 0) b.File(absl::StrCat("dir", n - 1, "/.wh.file"), "");
  return b.Finish();
}

// Layer blobs of every kind the converter must read.
enum class Input { kGzip, kZstd, kTar, kEstargz, kZstdChunked };

Descriptor AddLayer(FakeReader* r, Input kind, const std::string& tar,
                    const std::string& docker_or_oci_gzip) {
  switch (kind) {
    case Input::kGzip:
      return r->Add(docker_or_oci_gzip, testing::GzipForTest(tar));
    case Input::kZstd:
      return r->Add(kOciLayerZstd, testing::ZstdForTest(tar));
    case Input::kTar:
      return r->Add(kOciLayerTar, tar);
    case Input::kEstargz:
    case Input::kZstdChunked: {
      LayerWriterOptions o;
      o.compression =
          kind == Input::kEstargz ? Compression::kGzip : Compression::kZstd;
      o.chunk_size = 1000;
      StringBlobSink sink;
      absl::StatusOr<LayerWriteResult> w = WriteLayer(tar, o, &sink);
      EXPECT_TRUE(w.ok()) << w.status();
      Descriptor d =
          r->Add(kind == Input::kEstargz ? docker_or_oci_gzip : kOciLayerZstd,
                 sink.out);
      for (const auto& [k, v] : w->annotations) d.annotations[k] = v;
      return d;
    }
  }
  return {};
}

// An image of one layer per input kind. The config has fields of every
// JSON kind, odd spacing and escapes; the manifest has annotations and a
// subject.
SourceImage MakeImage(FakeReader* r, const std::vector<Input>& inputs,
                      bool docker = false, const std::string& arch = "amd64") {
  SourceImage img;
  std::vector<std::string> layer_json, diff_ids;
  for (size_t i = 0; i < inputs.size(); ++i) {
    img.tars.push_back(TarOf(static_cast<int>(i), arch));
    Descriptor d = AddLayer(r, inputs[i], img.tars.back(),
                            docker ? kDockerLayerGzip : kOciLayerGzip);
    d.annotations["org.example.note"] = absl::StrCat("layer ", i);
    std::string ann = ",\"annotations\":{";
    bool first = true;
    for (const auto& [k, v] : d.annotations) {
      absl::StrAppend(&ann, first ? "" : ",", Json(k), ":", Json(v));
      first = false;
    }
    ann += "}";
    layer_json.push_back(DescJson(d, ann));
    img.layers.push_back(d);
    // The diff_id of an eStargz input is that of its own tar stream.
    std::string stream = img.tars.back();
    if (inputs[i] == Input::kEstargz) {
      stream = Decompress(Compression::kGzip, r->blobs[d.digest.ToString()]);
    } else if (inputs[i] == Input::kZstdChunked) {
      stream = Decompress(Compression::kZstd, r->blobs[d.digest.ToString()]);
    }
    img.diff_ids.push_back(Sha256::Of(stream));
    diff_ids.push_back(Json(img.diff_ids.back().ToString()));
  }
  img.config_json = absl::StrCat(
      "{\"created\":\"2021-06-01T12:00:00Z\",  \"architecture\":\"", arch,
      "\",\"os\":\"linux\",\n  "
      "\"config\":{\"Env\":[\"PATH=/bin\",\"A=\\u003cb\\u003e\"],"
      "\"Cmd\":[\"/bin/sh\"],\"Labels\":{\"k\":\"v\"},\"ExposedPorts\":{\"80/"
      "tcp\":{}}},"
      "\"rootfs\":{\"type\":\"layers\", \"diff_ids\":[ ",
      absl::StrJoin(diff_ids, ", "),
      " ]},\"history\":[{\"created_by\":\"x\",\"empty_layer\":true}],"
      "\"x-number\":1.5e3,\"x-null\":null,\"x-bool\":false}");
  img.config = r->Add(docker ? kDockerConfig : kOciConfig, img.config_json);
  const std::string subject =
      DescJson(r->Add(kOciConfig, "{}"));  // any descriptor will do
  img.manifest_json = absl::StrCat(
      "{\n  \"schemaVersion\": 2,\n  \"mediaType\": ",
      Json(docker ? kDockerManifestType : kOciManifestType),
      ",\n  \"config\": ", DescJson(img.config), ",\n  \"layers\": [\n    ",
      absl::StrJoin(layer_json, ",\n    "), "\n  ]",
      docker ? ""
             : absl::StrCat(",\n  \"subject\": ", subject,
                            ",\n  \"annotations\": {\"org.example.m\": "
                            "\"kept\"}"),
      "\n}\n");
  img.manifest = r->Add(docker ? kDockerManifestType : kOciManifestType,
                        img.manifest_json);
  r->root = img.manifest;
  return img;
}

// The converted manifest (checked against what was tagged).
ImageManifest TaggedManifest(FakeWriter& w) {
  EXPECT_TRUE(w.tagged.has_value());
  absl::StatusOr<ImageManifest> m = ParseImageManifest(w.tagged_bytes);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : ImageManifest{};
}

class ImageConverterTest : public ::testing::Test {
 protected:
  ImageConvertOptions Options(Compression c = Compression::kGzip) {
    ImageConvertOptions o;
    o.layer.compression = c;
    o.layer.chunk_size = 1024;
    o.layer.threads = 2;
    o.progress = [this](const std::string& l) { progress_.push_back(l); };
    return o;
  }
  std::vector<std::string> progress_;
};

TEST_F(ImageConverterTest, EveryInputCompressionBecomesEstargz) {
  FakeReader r;
  SourceImage img = MakeImage(&r, {Input::kGzip, Input::kZstd, Input::kTar,
                                   Input::kEstargz, Input::kZstdChunked});
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep =
      ConvertImage(&r, &w, Options(Compression::kGzip));
  ASSERT_TRUE(rep.ok()) << rep.status();
  ImageManifest m = TaggedManifest(w);
  ASSERT_EQ(m.layers.size(), 5u);
  EXPECT_EQ(m.media_type, kOciManifestType);
  EXPECT_EQ(w.tagged->media_type, kOciManifestType);
  EXPECT_EQ(w.tagged->digest, Sha256::Of(w.tagged_bytes));
  EXPECT_EQ(rep->root.digest, w.tagged->digest);
  absl::StatusOr<std::string> cfg_bytes = w.Blob(m.config.digest);
  ASSERT_EQ(Sha256::Of(*cfg_bytes), m.config.digest);
  absl::StatusOr<ImageConfig> cfg = ParseImageConfig(*cfg_bytes);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  ASSERT_EQ(cfg->diff_ids.size(), 5u);

  std::string expected_config = img.config_json;
  ASSERT_EQ(rep->manifests.size(), 1u);
  EXPECT_EQ(rep->manifests[0].platform.String(), "linux/amd64");
  for (size_t i = 0; i < 5; ++i) {
    SCOPED_TRACE(absl::StrCat("layer ", i));
    const Descriptor& l = m.layers[i];
    EXPECT_EQ(l.media_type, kOciLayerGzip);
    const std::string& blob = w.Blob(l.digest);
    ASSERT_EQ(Sha256::Of(blob), l.digest);
    // diff_id = sha256 of the decompressed blob.
    const std::string tar = Decompress(Compression::kGzip, blob);
    EXPECT_EQ(cfg->diff_ids[i], Sha256::Of(tar));
    EXPECT_EQ(Payload(TarFiles(tar)), Payload(TarFiles(img.tars[i])));
    // The TOC annotation is the layer's trust anchor.
    auto toc = l.annotations.find(kTocDigestAnnotation);
    ASSERT_NE(toc, l.annotations.end());
    absl::StatusOr<Digest> td = Digest::Parse(toc->second);
    ASSERT_TRUE(td.ok());
    LayerOpenOptions lo;
    lo.toc_digest = *td;
    absl::StatusOr<std::unique_ptr<LayerReader>> lr =
        LayerReader::Open(std::make_shared<MemoryBlobSource>(blob), lo);
    EXPECT_TRUE(lr.ok()) << lr.status();
    EXPECT_EQ(rep->manifests[0].layers[i].toc_digest, *td);
    EXPECT_TRUE(rep->manifests[0].layers[i].converted);
    EXPECT_EQ(l.annotations.at("io.containers.estargz.uncompressed-size"),
              absl::StrCat(tar.size()));
    // Old annotations kept; a zstd:chunked input's own go.
    EXPECT_EQ(l.annotations.at("org.example.note"), absl::StrCat("layer ", i));
    EXPECT_EQ(
        l.annotations.count("io.containers.zstd-chunked.manifest-checksum"),
        0u);
    // The config changes only in this diff_id.
    absl::StrReplaceAll(
        {{Json(img.diff_ids[i].ToString()), Json(cfg->diff_ids[i].ToString())}},
        &expected_config);
  }
  EXPECT_EQ(*cfg_bytes, expected_config);
  EXPECT_EQ(m.config.media_type, kOciConfig);
  // The manifest keeps its own fields and layout.
  EXPECT_TRUE(absl::StrContains(w.tagged_bytes, "\"subject\": {"));
  EXPECT_TRUE(absl::StrContains(w.tagged_bytes,
                                "\"annotations\": {\"org.example.m\": "
                                "\"kept\"}"));
  EXPECT_TRUE(absl::StartsWith(w.tagged_bytes,
                               "{\n  \"schemaVersion\": 2,\n  \"mediaType\""));
  // Every blob went up once: 5 layers and the config.
  EXPECT_EQ(rep->blobs_uploaded, 6u);
  EXPECT_EQ(w.puts, 6);
  EXPECT_FALSE(progress_.empty());
  bool layer_line = false;
  for (const std::string& p : progress_) {
    layer_line |= absl::StartsWith(p, "layer 5/5 sha256:");
  }
  EXPECT_TRUE(layer_line) << absl::StrJoin(progress_, "\n");
}

TEST_F(ImageConverterTest, ZstdChunkedOutput) {
  FakeReader r;
  SourceImage img = MakeImage(&r, {Input::kGzip, Input::kEstargz});
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep =
      ConvertImage(&r, &w, Options(Compression::kZstd));
  ASSERT_TRUE(rep.ok()) << rep.status();
  ImageManifest m = TaggedManifest(w);
  absl::StatusOr<ImageConfig> cfg = ParseImageConfig(w.Blob(m.config.digest));
  ASSERT_TRUE(cfg.ok());
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Descriptor& l = m.layers[i];
    EXPECT_EQ(l.media_type, kOciLayerZstd);
    const std::string& blob = w.Blob(l.digest);
    EXPECT_EQ(cfg->diff_ids[i],
              Sha256::Of(Decompress(Compression::kZstd, blob)));
    EXPECT_EQ(
        l.annotations.count("io.containers.zstd-chunked.manifest-checksum"),
        1u);
    EXPECT_EQ(
        l.annotations.count("io.containers.zstd-chunked.manifest-position"),
        1u);
    LayerOpenOptions lo;
    lo.toc_digest = *Digest::Parse(l.annotations.at(kTocDigestAnnotation));
    EXPECT_TRUE(
        LayerReader::Open(std::make_shared<MemoryBlobSource>(blob), lo).ok());
  }
}

TEST_F(ImageConverterTest, DockerManifestTypes) {
  {
    // eStargz: Docker types kept.
    FakeReader r;
    MakeImage(&r, {Input::kGzip}, /*docker=*/true);
    FakeWriter w;
    ASSERT_TRUE(ConvertImage(&r, &w, Options(Compression::kGzip)).ok());
    ImageManifest m = TaggedManifest(w);
    EXPECT_EQ(m.media_type, kDockerManifestType);
    EXPECT_EQ(w.tagged->media_type, kDockerManifestType);
    EXPECT_EQ(m.config.media_type, kDockerConfig);
    EXPECT_EQ(m.layers[0].media_type, kDockerLayerGzip);
  }
  {
    // zstd:chunked has no Docker type: everything becomes OCI.
    FakeReader r;
    MakeImage(&r, {Input::kGzip}, /*docker=*/true);
    FakeWriter w;
    ASSERT_TRUE(ConvertImage(&r, &w, Options(Compression::kZstd)).ok());
    ImageManifest m = TaggedManifest(w);
    EXPECT_EQ(m.media_type, kOciManifestType);
    EXPECT_EQ(w.tagged->media_type, kOciManifestType);
    EXPECT_EQ(m.config.media_type, kOciConfig);
    EXPECT_EQ(m.layers[0].media_type, kOciLayerZstd);
  }
}

TEST_F(ImageConverterTest, DockerManifestListBecomesOciIndexForZstd) {
  for (Compression c : {Compression::kGzip, Compression::kZstd}) {
    SCOPED_TRACE(c == Compression::kGzip ? "estargz" : "zstd:chunked");
    FakeReader r;
    SourceImage img = MakeImage(&r, {Input::kGzip}, /*docker=*/true);
    const std::string list = absl::StrCat(
        "{\"schemaVersion\":2,\"mediaType\":", Json(kDockerManifestListType),
        ",\"manifests\":[",
        DescJson(img.manifest,
                 ",\"platform\":{\"architecture\":\"amd64\",\"os\":"
                 "\"linux\"}"),
        "]}");
    r.root = r.Add(kDockerManifestListType, list);
    FakeWriter w;
    ASSERT_TRUE(ConvertImage(&r, &w, Options(c)).ok());
    absl::StatusOr<ImageIndex> idx = ParseImageIndex(w.tagged_bytes);
    ASSERT_TRUE(idx.ok());
    const bool oci = c == Compression::kZstd;
    EXPECT_EQ(idx->media_type, oci ? kOciIndexType : kDockerManifestListType);
    EXPECT_EQ(w.tagged->media_type, idx->media_type);
    EXPECT_EQ(idx->manifests[0].media_type,
              oci ? kOciManifestType : kDockerManifestType);
    EXPECT_EQ(w.manifest_types[idx->manifests[0].digest.ToString()],
              idx->manifests[0].media_type);
    EXPECT_EQ(idx->manifests[0].platform->String(), "linux/amd64");
  }
}

TEST_F(ImageConverterTest, RepeatedLayerIsConvertedOnce) {
  FakeReader r;
  const std::string tar = TarOf(0, "amd64");
  Descriptor layer = r.Add(kOciLayerGzip, testing::GzipForTest(tar));
  const std::string id = Json(Sha256::Of(tar).ToString());
  Descriptor config = r.Add(
      kOciConfig, absl::StrCat("{\"architecture\":\"amd64\",\"os\":\"linux\","
                               "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[",
                               id, ",", id, "]}}"));
  r.root = r.Add(
      kOciManifestType,
      absl::StrCat("{\"schemaVersion\":2,\"config\":", DescJson(config),
                   ",\"layers\":[", DescJson(layer), ",",
                   DescJson(layer, ",\"annotations\":{\"second\":\"yes\"}"),
                   "]}"));
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options());
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(r.blob_reads, 2);  // the config and the layer, once
  ImageManifest m = TaggedManifest(w);
  ASSERT_EQ(m.layers.size(), 2u);
  EXPECT_EQ(m.layers[0].digest, m.layers[1].digest);
  EXPECT_EQ(m.layers[0].annotations.count("second"), 0u);
  EXPECT_EQ(m.layers[1].annotations.at("second"), "yes");
  EXPECT_EQ(m.layers[1].annotations.at(kTocDigestAnnotation),
            m.layers[0].annotations.at(kTocDigestAnnotation));
  absl::StatusOr<ImageConfig> c = ParseImageConfig(w.Blob(m.config.digest));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->diff_ids[0], c->diff_ids[1]);
  EXPECT_NE(c->diff_ids[0], Sha256::Of(tar));
  // A manifest without "mediaType" stays without one.
  EXPECT_FALSE(absl::StrContains(w.tagged_bytes,
                                 "\"mediaType\":\"application/"
                                 "vnd.oci.image.manifest"));
}

// An index of two platforms (and an attestation manifest for one).
struct IndexImage {
  SourceImage amd64, arm64, attestation;
  Descriptor index;
};

IndexImage MakeIndex(FakeReader* r) {
  IndexImage x;
  x.amd64 = MakeImage(r, {Input::kGzip, Input::kZstd});
  x.arm64 = MakeImage(r, {Input::kTar}, false, "arm64");
  // An attestation: a non-tar layer, describing the amd64 manifest.
  Descriptor att_layer = r->Add("application/vnd.in-toto+json", "{\"a\":1}");
  Descriptor att_config =
      r->Add(kOciConfig,
             "{\"architecture\":\"unknown\",\"os\":\"unknown\",\"config\":{},"
             "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"" +
                 Sha256::Of("{\"a\":1}").ToString() + "\"]}}");
  const std::string att_manifest = absl::StrCat(
      "{\"schemaVersion\":2,\"mediaType\":", Json(kOciManifestType),
      ",\"config\":", DescJson(att_config), ",\"layers\":[",
      DescJson(att_layer), "]}");
  x.attestation.manifest = r->Add(kOciManifestType, att_manifest);
  const std::string index = absl::StrCat(
      "{\"schemaVersion\":2,\"mediaType\":", Json(kOciIndexType),
      ",\"manifests\":[",
      DescJson(x.amd64.manifest,
               ",\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},"
               "\"annotations\":{\"org.example.e\":\"amd\"}"),
      ",",
      DescJson(x.arm64.manifest,
               ",\"platform\":{\"architecture\":\"arm64\",\"os\":\"linux\","
               "\"variant\":\"v8\"}"),
      ",",
      DescJson(x.attestation.manifest,
               absl::StrCat(",\"platform\":{\"architecture\":\"unknown\","
                            "\"os\":\"unknown\"},\"annotations\":{"
                            "\"vnd.docker.reference.digest\":",
                            Json(x.amd64.manifest.digest.ToString()),
                            ",\"vnd.docker.reference.type\":"
                            "\"attestation-manifest\"}")),
      "],\"annotations\":{\"org.example.i\":\"idx\"}}");
  x.index = r->Add(kOciIndexType, index);
  r->root = x.index;
  return x;
}

// An index listing one entry many times (same digest and platform) is
// converted once: the layer is read once, every entry names the result.
TEST_F(ImageConverterTest, RepeatedIndexEntriesAreConvertedOnce) {
  FakeReader r;
  IndexImage x = MakeIndex(&r);
  const std::string entry =
      DescJson(x.amd64.manifest,
               ",\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"}");
  auto convert = [&](int copies, std::string* out) {
    std::string many;
    for (int i = 0; i < copies; ++i)
      absl::StrAppend(&many, i ? "," : "", entry);
    r.root =
        r.Add(kOciIndexType,
              absl::StrCat("{\"schemaVersion\":2,\"mediaType\":\"",
                           kOciIndexType, "\",\"manifests\":[", many, "]}"));
    r.blob_reads = 0;
    FakeWriter w;
    absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options());
    EXPECT_TRUE(rep.ok()) << rep.status();
    *out = w.tagged_bytes;
    return r.blob_reads;
  };
  std::string one, fifty;
  const int reads_for_one = convert(1, &one);
  EXPECT_EQ(convert(50, &fifty), reads_for_one);
  absl::StatusOr<ImageIndex> a = ParseImageIndex(one),
                             b = ParseImageIndex(fifty);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(b->manifests.size(), 50u);
  for (const Descriptor& d : b->manifests) {
    EXPECT_EQ(d.digest, a->manifests[0].digest);
  }
}

TEST_F(ImageConverterTest, IndexKeepsEveryPlatform) {
  FakeReader r;
  IndexImage x = MakeIndex(&r);
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options());
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(w.tagged->media_type, kOciIndexType);
  absl::StatusOr<ImageIndex> idx = ParseImageIndex(w.tagged_bytes);
  ASSERT_TRUE(idx.ok());
  ASSERT_EQ(idx->manifests.size(), 3u);
  EXPECT_EQ(idx->manifests[0].platform->String(), "linux/amd64");
  EXPECT_EQ(idx->manifests[0].annotations.at("org.example.e"), "amd");
  EXPECT_EQ(idx->manifests[1].platform->String(), "linux/arm64/v8");
  EXPECT_TRUE(absl::StrContains(w.tagged_bytes, "\"org.example.i\":\"idx\""));
  ASSERT_EQ(rep->manifests.size(), 3u);
  EXPECT_EQ(rep->manifests[0].platform.String(), "linux/amd64");
  EXPECT_EQ(rep->manifests[1].platform.String(), "linux/arm64/v8");
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(idx->manifests[i].digest, rep->manifests[i].to.digest);
    ASSERT_TRUE(w.manifests.count(idx->manifests[i].digest.ToString()));
  }
  // The attestation's layer is copied as it is, and its reference follows
  // the amd64 manifest.
  const ImageManifest att =
      *ParseImageManifest(w.manifests[idx->manifests[2].digest.ToString()]);
  EXPECT_EQ(att.layers[0].media_type, "application/vnd.in-toto+json");
  EXPECT_EQ(w.Blob(att.layers[0].digest), "{\"a\":1}");
  EXPECT_FALSE(rep->manifests[2].layers[0].converted);
  EXPECT_EQ(idx->manifests[2].annotations.at("vnd.docker.reference.digest"),
            idx->manifests[0].digest.ToString());
  EXPECT_NE(idx->manifests[0].digest, x.amd64.manifest.digest);
  // Its config needed no change: the same blob.
  EXPECT_EQ(
      att.config.digest.ToString(),
      ParseImageManifest(r.blobs[x.attestation.manifest.digest.ToString()])
          ->config.digest.ToString());
}

// Podman's mark of a zstd instance on an index entry says what its layers
// are after conversion: dropped for eStargz, set for zstd:chunked.
TEST_F(ImageConverterTest, TheZstdInstanceMarkFollowsTheLayers) {
  FakeReader r;
  IndexImage x = MakeIndex(&r);
  std::string index = r.blobs[x.index.digest.ToString()];
  absl::StrReplaceAll({{"\"org.example.e\":\"amd\"",
                        "\"org.example.e\":\"amd\",\"io.github.containers."
                        "compression.zstd\":\"true\""}},
                      &index);
  r.root = r.Add(kOciIndexType, index);
  for (Compression c : {Compression::kGzip, Compression::kZstd}) {
    FakeWriter w;
    absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options(c));
    ASSERT_TRUE(rep.ok()) << rep.status();
    absl::StatusOr<ImageIndex> idx = ParseImageIndex(w.tagged_bytes);
    ASSERT_TRUE(idx.ok()) << idx.status();
    ASSERT_EQ(idx->manifests.size(), 3u);
    for (size_t i = 0; i < 2; ++i) {
      const auto& a = idx->manifests[i].annotations;
      auto z = a.find("io.github.containers.compression.zstd");
      if (c == Compression::kZstd) {
        ASSERT_NE(z, a.end()) << i;
        EXPECT_EQ(z->second, "true");
      } else {
        EXPECT_EQ(z, a.end()) << i << ": " << w.tagged_bytes;
      }
    }
    EXPECT_EQ(idx->manifests[0].annotations.at("org.example.e"), "amd");
    // Not on the attestation, whose layers are no image's.
    EXPECT_EQ(idx->manifests[2].annotations.count(
                  "io.github.containers.compression.zstd"),
              0u);
  }
}

// A descriptor may list its members in any order: "urls" and "data" side
// by side first (both go from a converted layer) once crashed the
// converter (two overlapping cuts of the text).
TEST_F(ImageConverterTest, DescriptorsStartingWithUrlsAndData) {
  FakeReader r;
  SourceImage img = MakeImage(&r, {Input::kGzip});
  std::string man = img.manifest_json;
  const std::string layer_start =
      absl::StrCat("{\"mediaType\":", Json(img.layers[0].media_type));
  ASSERT_TRUE(absl::StrContains(man, layer_start));
  absl::StrReplaceAll(
      {{layer_start,
        absl::StrCat("{\"urls\":[\"https://example/l\"],\"data\":\"e30=\",",
                     layer_start.substr(1))}},
      &man);
  r.root = r.Add(kOciManifestType, man);
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options());
  ASSERT_TRUE(rep.ok()) << rep.status();
  ImageManifest m = TaggedManifest(w);
  ASSERT_EQ(m.layers.size(), 1u);
  EXPECT_TRUE(m.layers[0].urls.empty());
  EXPECT_FALSE(absl::StrContains(w.tagged_bytes, "e30="));
  EXPECT_FALSE(absl::StrContains(w.tagged_bytes, "example/l"));
  EXPECT_TRUE(absl::StrContains(w.tagged_bytes, "org.example.note"));
}

// An OCI 1.1 referrer in the index (a signature or SBOM whose `subject` is
// an image manifest, listed before it) names the converted manifest: its
// subject followed the rewrite (it named a manifest the destination lacks,
// so registries filed it under nothing).
TEST_F(ImageConverterTest, AReferrersSubjectFollowsTheManifest) {
  FakeReader r;
  SourceImage img = MakeImage(&r, {Input::kGzip});
  Descriptor sbom = r.Add("application/spdx+json", "{\"spdx\":1}");
  Descriptor empty = r.Add("application/vnd.oci.empty.v1+json", "{}");
  const std::string referrer_json = absl::StrCat(
      "{\"schemaVersion\":2,\"mediaType\":", Json(kOciManifestType),
      ",\"artifactType\":\"application/spdx+json\",\"config\":",
      DescJson(empty), ",\"layers\":[", DescJson(sbom),
      "],\"subject\":", DescJson(img.manifest), "}");
  Descriptor referrer = r.Add(kOciManifestType, referrer_json);
  r.root = r.Add(
      kOciIndexType,
      absl::StrCat(
          "{\"schemaVersion\":2,\"mediaType\":", Json(kOciIndexType),
          ",\"manifests\":[",
          DescJson(referrer, ",\"artifactType\":\"application/spdx+json\""),
          ",",
          DescJson(img.manifest,
                   ",\"platform\":{\"architecture\":"
                   "\"amd64\",\"os\":\"linux\"}"),
          "]}"));
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options());
  ASSERT_TRUE(rep.ok()) << rep.status();
  absl::StatusOr<ImageIndex> idx = ParseImageIndex(w.tagged_bytes);
  ASSERT_TRUE(idx.ok()) << idx.status();
  ASSERT_EQ(idx->manifests.size(), 2u);
  const Descriptor& new_image = idx->manifests[1];
  EXPECT_NE(new_image.digest, img.manifest.digest);
  const std::string new_referrer =
      w.manifests[idx->manifests[0].digest.ToString()];
  EXPECT_TRUE(absl::StrContains(new_referrer, new_image.digest.ToString()))
      << new_referrer;
  EXPECT_TRUE(absl::StrContains(new_referrer,
                                absl::StrCat("\"size\":", new_image.size)))
      << new_referrer;
  EXPECT_FALSE(absl::StrContains(new_referrer, img.manifest.digest.ToString()));
  EXPECT_TRUE(absl::StrContains(new_referrer, "application/spdx+json"));
  EXPECT_EQ(w.Blob(sbom.digest), "{\"spdx\":1}");
}

TEST_F(ImageConverterTest, IndexKeepsOnlyThePlatformAsked) {
  FakeReader r;
  MakeIndex(&r);
  FakeWriter w;
  ImageConvertOptions o = Options();
  o.only_platform = *Platform::Parse("linux/arm64");
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  absl::StatusOr<ImageIndex> idx = ParseImageIndex(w.tagged_bytes);
  ASSERT_TRUE(idx.ok()) << idx.status() << w.tagged_bytes;
  ASSERT_EQ(idx->manifests.size(), 1u);
  EXPECT_EQ(idx->manifests[0].platform->String(), "linux/arm64/v8");
  ASSERT_EQ(rep->manifests.size(), 1u);
  EXPECT_EQ(rep->manifests[0].platform.String(), "linux/arm64/v8");
  EXPECT_TRUE(absl::StrContains(w.tagged_bytes, "\"org.example.i\":\"idx\""));
  // Nothing of amd64 was read or written.
  EXPECT_EQ(w.manifests.size(), 2u);  // the arm64 manifest and the index

  o.only_platform = *Platform::Parse("linux/s390x");
  FakeWriter w2;
  rep = ConvertImage(&r, &w2, o);
  ASSERT_FALSE(rep.ok());
  EXPECT_TRUE(absl::StrContains(rep.status().message(), "s390x"));
  EXPECT_FALSE(w2.tagged.has_value());
}

TEST_F(ImageConverterTest, CorruptLayerFailsAndNothingIsTagged) {
  FakeReader r;
  SourceImage img = MakeImage(&r, {Input::kGzip, Input::kGzip});
  std::string& blob = r.blobs[img.layers[1].digest.ToString()];
  blob[blob.size() / 2] ^= 0x55;
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options());
  ASSERT_FALSE(rep.ok());
  EXPECT_FALSE(w.tagged.has_value());
  EXPECT_TRUE(absl::StrContains(rep.status().message(), "layer 2/2"))
      << rep.status();
  EXPECT_TRUE(
      absl::StrContains(rep.status().message(), img.manifest.digest.ToString()))
      << rep.status();
  EXPECT_TRUE(absl::StrContains(rep.status().message(),
                                img.layers[1].digest.ToString()))
      << rep.status();
  EXPECT_TRUE(w.manifests.empty());

  // A tar that is not one.
  FakeReader r2;
  SourceImage img2 = MakeImage(&r2, {Input::kGzip});
  const std::string junk = testing::GzipForTest(std::string(5000, 'j'));
  Descriptor bad = r2.Add(kOciLayerGzip, junk);
  std::string man = img2.manifest_json;
  absl::StrReplaceAll(
      {{img2.layers[0].digest.ToString(), bad.digest.ToString()},
       {absl::StrCat("\"size\":", img2.layers[0].size),
        absl::StrCat("\"size\":", bad.size)}},
      &man);
  r2.root = r2.Add(kOciManifestType, man);
  FakeWriter w2;
  rep = ConvertImage(&r2, &w2, Options());
  ASSERT_FALSE(rep.ok());
  EXPECT_FALSE(w2.tagged.has_value());
  EXPECT_TRUE(absl::StrContains(rep.status().message(), "layer 1/1"));
}

TEST_F(ImageConverterTest, PrioritizedFilesPerPlatformAndLayer) {
  FakeReader r;
  MakeIndex(&r);
  FakeWriter w;
  ImageConvertOptions o = Options();
  std::vector<std::string> calls;
  o.prioritized_files = [&](const Platform& p, size_t i) {
    calls.push_back(absl::StrCat(p.String(), "#", i));
    if (p.architecture == "amd64" && i == 1) {
      return std::vector<std::string>{"dir1/file", "not/there"};
    }
    return std::vector<std::string>{};
  };
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  // Tar layers only: two of amd64, one of arm64 (not the attestation).
  EXPECT_EQ(absl::StrJoin(calls, ","),
            "linux/amd64#0,linux/amd64#1,linux/arm64/v8#0");
  const ConvertedLayer& l = rep->manifests[0].layers[1];
  EXPECT_EQ(l.missing_prioritized, std::vector<std::string>{"not/there"});
  std::map<std::string, std::string> files =
      TarFiles(Decompress(Compression::kGzip, w.Blob(l.to.digest)));
  EXPECT_EQ(files.count(".prefetch.landmark"), 1u);
  EXPECT_EQ(files.count(".no.prefetch.landmark"), 0u);
  std::map<std::string, std::string> other = TarFiles(Decompress(
      Compression::kGzip, w.Blob(rep->manifests[0].layers[0].to.digest)));
  EXPECT_EQ(other.count(".no.prefetch.landmark"), 1u);
}

TEST_F(ImageConverterTest, SecondRunUploadsNothing) {
  FakeReader r;
  MakeIndex(&r);
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> a = ConvertImage(&r, &w, Options());
  ASSERT_TRUE(a.ok());
  EXPECT_GT(a->blobs_uploaded, 0u);
  const int puts = w.puts;
  absl::StatusOr<ImageConvertReport> b = ConvertImage(&r, &w, Options());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->blobs_uploaded, 0u);
  EXPECT_EQ(b->blobs_skipped, a->blobs_uploaded + a->blobs_skipped);
  EXPECT_EQ(w.puts, puts);
  EXPECT_EQ(a->root.digest, b->root.digest);  // deterministic
}

TEST_F(ImageConverterTest, UnchangedBlobsAreMountedConvertedOnesNot) {
  FakeReader r;
  IndexImage x = MakeIndex(&r);
  FakeWriter w;
  const ImageManifest att =
      *ParseImageManifest(r.blobs[x.attestation.manifest.digest.ToString()]);
  w.mountable = {att.layers[0].digest.ToString(), att.config.digest.ToString()};
  ImageConvertOptions o = Options();
  o.mount_from_repository = "library/src";
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(w.Blob(att.layers[0].digest), "mounted");
  EXPECT_EQ(w.Blob(att.config.digest), "mounted");
  EXPECT_EQ(rep->blobs_skipped, 2u);
  // Only those two (unchanged) blobs were offered for a mount.
  EXPECT_EQ(w.mount_calls.size(), 2u) << absl::StrJoin(w.mount_calls, " ");
  for (const std::string& c : w.mount_calls) {
    EXPECT_TRUE(absl::StartsWith(c, "library/src@")) << c;
  }
}

TEST_F(ImageConverterTest, ForeignLayerIsLeftAlone) {
  FakeReader r;
  SourceImage img = MakeImage(&r, {Input::kGzip}, /*docker=*/true);
  // Add a foreign layer below, not stored in the source at all.
  Descriptor foreign;
  foreign.media_type =
      "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
  foreign.digest = Sha256::Of("windows base");
  foreign.size = 12;
  std::string man = img.manifest_json;
  absl::StrReplaceAll(
      {{"\"layers\": [\n    ",
        absl::StrCat("\"layers\": [\n    ",
                     DescJson(foreign, ",\"urls\":[\"https://example/x\"]"),
                     ",")}},
      &man);
  std::string cfg = img.config_json;
  absl::StrReplaceAll({{"\"diff_ids\":[ ",
                        absl::StrCat("\"diff_ids\":[ ",
                                     Json(Sha256::Of("x").ToString()), ",")}},
                      &cfg);
  Descriptor cfg_d = r.Add(kDockerConfig, cfg);
  absl::StrReplaceAll({{img.config.digest.ToString(), cfg_d.digest.ToString()},
                       {absl::StrCat("\"size\":", img.config.size, "}"),
                        absl::StrCat("\"size\":", cfg_d.size, "}")}},
                      &man);
  r.root = r.Add(kDockerManifestType, man);
  FakeWriter w;
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(&r, &w, Options());
  ASSERT_TRUE(rep.ok()) << rep.status();
  ImageManifest m = TaggedManifest(w);
  ASSERT_EQ(m.layers.size(), 2u);
  EXPECT_EQ(m.layers[0].digest, foreign.digest);
  EXPECT_EQ(m.layers[0].media_type, foreign.media_type);
  EXPECT_TRUE(absl::StrContains(w.tagged_bytes, "https://example/x"));
  EXPECT_EQ(w.blobs.count(foreign.digest.ToString()), 0u);
  absl::StatusOr<ImageConfig> c = ParseImageConfig(w.Blob(m.config.digest));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->diff_ids[0], Sha256::Of("x"));
}

TEST_F(ImageConverterTest, RootfsDirectoryIsAOneLayerImage) {
  const char* tmp = getenv("TEST_TMPDIR");
  const std::string dir =
      absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/rootfs-image");
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/etc").c_str(), 0755);
  std::ofstream(dir + "/etc/hostname") << "box\n";
  RootfsImageOptions ro;
  ro.platform = *Platform::Parse("linux/arm64/v8");
  absl::StatusOr<std::unique_ptr<ImageReader>> reader =
      OpenRootfsImageReader(dir, ro);
  ASSERT_TRUE(reader.ok()) << reader.status();
  FakeWriter w;
  ImageConvertOptions o = Options();
  o.prioritized_files = [](const Platform& p, size_t i) {
    EXPECT_EQ(p.String(), "linux/arm64/v8");
    EXPECT_EQ(i, 0u);
    return std::vector<std::string>{"etc/hostname"};
  };
  absl::StatusOr<ImageConvertReport> rep = ConvertImage(reader->get(), &w, o);
  ASSERT_TRUE(rep.ok()) << rep.status();
  ImageManifest m = TaggedManifest(w);
  ASSERT_EQ(m.layers.size(), 1u);
  const std::string config = w.Blob(m.config.digest);
  absl::StatusOr<ImageConfig> c = ParseImageConfig(config);
  ASSERT_TRUE(c.ok()) << config;
  EXPECT_EQ(c->platform.String(), "linux/arm64/v8");
  const std::string tar =
      Decompress(Compression::kGzip, w.Blob(m.layers[0].digest));
  EXPECT_EQ(c->diff_ids[0], Sha256::Of(tar));
  std::map<std::string, std::string> files = TarFiles(tar);
  EXPECT_EQ(files["etc/hostname"], "box\n");
  EXPECT_EQ(files.count(".prefetch.landmark"), 1u);
  EXPECT_TRUE(absl::StrContains(config, "\"config\":{}")) << config;
  EXPECT_TRUE(absl::StrContains(config, "\"history\":[{")) << config;
  // Pushing the same tree again gives the same image.
  absl::StatusOr<std::unique_ptr<ImageReader>> again =
      OpenRootfsImageReader(dir, ro);
  ASSERT_TRUE(again.ok());
  absl::StatusOr<ImageConvertReport> rep2 = ConvertImage(again->get(), &w, o);
  ASSERT_TRUE(rep2.ok());
  EXPECT_EQ(rep2->root.digest, rep->root.digest);
  EXPECT_EQ(rep2->blobs_uploaded, 0u);
}

}  // namespace
}  // namespace lazypull
