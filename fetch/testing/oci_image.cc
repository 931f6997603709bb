#include "fetch/testing/oci_image.h"

#include <sys/stat.h>

#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/compressor.h"
#include "core/status_macros.h"
#include "fetch/testing/registry_fixture.h"

namespace lazypull::testing {

std::string TestDescriptor::Json() const {
  std::string s =
      absl::StrCat("{\"mediaType\":\"", media_type, "\",\"digest\":\"",
                   digest.ToString(), "\",\"size\":", size);
  if (!platform.empty()) {
    std::vector<std::string> p = absl::StrSplit(platform, '/');
    absl::StrAppend(&s, ",\"platform\":{\"os\":\"", p[0],
                    "\",\"architecture\":\"", p.size() > 1 ? p[1] : "", "\"");
    if (p.size() > 2) absl::StrAppend(&s, ",\"variant\":\"", p[2], "\"");
    absl::StrAppend(&s, "}");
  }
  return s + "}";
}

namespace {

std::string Compress(Compression c, const std::string& data) {
  auto comp = MemberCompressor::New(
      c, c == Compression::kGzip ? kDefaultGzipLevel : kDefaultZstdLevel);
  std::string out;
  if (!comp.ok() || !(*comp)->Compress(data, &out).ok()) std::abort();
  return out;
}

}  // namespace

std::string GzipForTest(const std::string& data) {
  return Compress(Compression::kGzip, data);
}
std::string ZstdForTest(const std::string& data) {
  return Compress(Compression::kZstd, data);
}

absl::StatusOr<OciLayout> OciLayout::Create(const std::string& dir) {
  mkdir(dir.c_str(), 0755);
  mkdir((dir + "/blobs").c_str(), 0755);
  mkdir((dir + "/blobs/sha256").c_str(), 0755);
  std::ofstream(dir + "/oci-layout") << "{\"imageLayoutVersion\":\"1.0.0\"}";
  OciLayout l(dir);
  RETURN_IF_ERROR(l.Tag("", TestDescriptor{}));
  return l;
}

std::string OciLayout::BlobPath(const Digest& d) const {
  return absl::StrCat(dir_, "/blobs/sha256/", d.Hex());
}

absl::StatusOr<TestDescriptor> OciLayout::AddBlob(const std::string& media_type,
                                                  const std::string& bytes) {
  TestDescriptor d;
  d.media_type = media_type;
  d.digest = Sha256::Of(bytes);
  d.size = static_cast<int64_t>(bytes.size());
  std::ofstream out(BlobPath(d.digest), std::ios::binary);
  out << bytes;
  if (!out) return absl::InternalError("cannot write blob");
  return d;
}

absl::StatusOr<TestImage> OciLayout::AddImage(
    const std::vector<std::string>& layer_tars, const std::string& platform,
    TestCompression compression) {
  TestImage img;
  std::vector<std::string> diff_ids;
  for (const std::string& tar : layer_tars) {
    diff_ids.push_back(absl::StrCat("\"", Sha256::Of(tar).ToString(), "\""));
    std::string media = "application/vnd.oci.image.layer.v1.tar";
    std::string bytes = tar;
    if (compression == TestCompression::kGzip) {
      media += "+gzip";
      bytes = GzipForTest(tar);
    } else if (compression == TestCompression::kZstd) {
      media += "+zstd";
      bytes = ZstdForTest(tar);
    }
    ASSIGN_OR_RETURN(TestDescriptor d, AddBlob(media, bytes));
    img.layers.push_back(d);
  }
  std::vector<std::string> p = absl::StrSplit(platform, '/');
  std::string config = absl::StrCat(
      "{\"architecture\":\"", p.size() > 1 ? p[1] : "amd64", "\",\"os\":\"",
      p[0], "\",",
      p.size() > 2 ? absl::StrCat("\"variant\":\"", p[2], "\",") : "",
      "\"config\":{},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[",
      absl::StrJoin(diff_ids, ","), "]}}");
  ASSIGN_OR_RETURN(img.config,
                   AddBlob("application/vnd.oci.image.config.v1+json", config));
  std::vector<std::string> layers;
  for (const TestDescriptor& l : img.layers) layers.push_back(l.Json());
  std::string manifest = absl::StrCat(
      "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image."
      "manifest.v1+json\",\"config\":",
      img.config.Json(), ",\"layers\":[", absl::StrJoin(layers, ","), "]}");
  ASSIGN_OR_RETURN(
      img.manifest,
      AddBlob("application/vnd.oci.image.manifest.v1+json", manifest));
  img.manifest.platform = platform;
  return img;
}

absl::StatusOr<TestDescriptor> OciLayout::AddIndex(
    const std::vector<TestDescriptor>& manifests) {
  std::vector<std::string> entries;
  for (const TestDescriptor& m : manifests) entries.push_back(m.Json());
  std::string index = absl::StrCat(
      "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index."
      "v1+json\",\"manifests\":[",
      absl::StrJoin(entries, ","), "]}");
  return AddBlob("application/vnd.oci.image.index.v1+json", index);
}

absl::Status OciLayout::Tag(const std::string& tag, const TestDescriptor& d) {
  if (!tag.empty()) {
    TestDescriptor plain = d;
    plain.platform.clear();
    tags_.emplace_back(tag, plain);
  }
  std::vector<std::string> entries;
  for (const auto& [t, desc] : tags_) {
    std::string j = desc.Json();
    j.pop_back();
    absl::StrAppend(
        &j, ",\"annotations\":{\"org.opencontainers.image.ref.name\":\"", t,
        "\"}}");
    entries.push_back(j);
  }
  std::ofstream(dir_ + "/index.json")
      << absl::StrCat("{\"schemaVersion\":2,\"manifests\":[",
                      absl::StrJoin(entries, ","), "]}");
  return absl::OkStatus();
}

absl::Status PushWithSkopeo(const OciLayout& layout, const std::string& tag,
                            const std::string& host, const std::string& repo,
                            bool all, const std::string& creds) {
  std::vector<std::string> argv = {"skopeo", "--insecure-policy", "copy",
                                   "--dest-tls-verify=false"};
  if (all) argv.push_back("--all");
  if (!creds.empty()) argv.push_back("--dest-creds=" + creds);
  argv.push_back(absl::StrCat("oci:", layout.dir(), ":", tag));
  argv.push_back(absl::StrCat("docker://", host, "/", repo, ":", tag));
  std::string out;
  return RunProcess(argv, &out);
}

}  // namespace lazypull::testing
