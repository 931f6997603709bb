// `lazypull push` and `lazypull image convert` end to end, as root, against
// docker-registry over TLS: images built here as OCI layouts, pushed once
// with skopeo as they are and once with lazypull as eStargz / zstd:chunked;
// `lazypull pull` of both must give the same tree, the pushed layers must
// carry their TOC digests, `lazypull mount` must serve them, and pushing
// again must upload nothing.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/testing/tar_builder.h"
#include "fetch/testing/oci_image.h"
#include "fetch/testing/registry_fixture.h"
#include "gtest/gtest.h"
#include "simdjson.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull {
namespace {

using testing::CompareTrees;
using testing::OciLayout;
using testing::RegistryServer;
using testing::RegistryServerOptions;
using testing::RunResult;
using testing::TarBuilder;
using testing::TarSpec;
using testing::TestDir;
using testing::TreeCompareOptions;

constexpr char kTocDigest[] = "containerd.io/snapshot/stargz/toc.digest";

std::string Payload(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s[i] = static_cast<char>('a' + (x % 26));
  }
  return s;
}

// Three layers: a base, whiteouts and an opaque directory, a top.
std::vector<std::string> ImageTars() {
  TarBuilder b1;
  b1.Dir("./");
  b1.Dir("etc/");
  b1.File("etc/passwd", "root:x:0:0::/root:/bin/sh\n");
  b1.File("etc/remove-me", "x");
  b1.Dir("data/");
  b1.File("data/big", Payload(1 << 20, 1));
  b1.File("data/small", "small");
  b1.Hardlink("data/small-link", "data/small");
  b1.Symlink("data/link", "big");
  TarSpec owned;
  owned.name = "data/owned";
  owned.content = "owned";
  owned.uid = 1000;
  owned.gid = 100;
  owned.mode = 0600;
  owned.xattrs = {{"user.note", "n"}};
  b1.Add(owned);
  b1.Dir("opq/");
  b1.File("opq/old", "old");

  TarBuilder b2;
  b2.Dir("etc/");
  b2.File("etc/.wh.remove-me", "");
  b2.File("etc/motd", "layer 2\n");
  b2.Dir("opq/");
  b2.File("opq/.wh..wh..opq", "");
  b2.File("opq/new", "new");

  TarBuilder b3;
  b3.Dir("etc/");
  b3.File("etc/motd", "layer 3\n");
  b3.Dir("top/");
  b3.File("top/file", Payload(300 << 10, 3));
  return {b1.Finish(), b2.Finish(), b3.Finish()};
}

class PushCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (pull owners)";
    bin_ = testing::LazypullBinary();
    dir_ = TestDir("work");
    RegistryServerOptions o;
    o.work_dir = dir_ + "/registry";
    mkdir(o.work_dir.c_str(), 0755);
    o.tls = true;
    auto reg = RegistryServer::Start(o);
    ASSERT_TRUE(reg.ok()) << reg.status();
    reg_ = std::move(*reg);
  }

  std::string Ref(const std::string& repo_tag) const {
    return absl::StrCat(reg_->host(), "/", repo_tag);
  }

  RunResult Lazypull(std::vector<std::string> args) {
    args.insert(args.begin(), bin_);
    return testing::Run(args);
  }

  // lazypull with the registry's CA.
  RunResult Networked(std::vector<std::string> args) {
    args.push_back("--ca-file");
    args.push_back(reg_->ca_file());
    return Lazypull(std::move(args));
  }

  std::string Pull(const std::string& ref, const std::string& name,
                   std::vector<std::string> extra = {}) {
    const std::string out = absl::StrCat(dir_, "/pulled-", name);
    std::vector<std::string> args = {"pull", ref, out};
    for (auto& e : extra) args.push_back(e);
    RunResult r = Networked(args);
    EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
    return out;
  }

  // The raw manifest or index at `ref` (skopeo).
  std::string Raw(const std::string& location) {
    std::string out;
    absl::Status st = testing::RunProcess(
        {"skopeo", "inspect", "--raw", "--tls-verify=false", location}, &out);
    EXPECT_TRUE(st.ok()) << st;
    return out;
  }

  // An OCI layout of ImageTars() (gzip layers) tagged v1.
  std::string Layout(const std::string& name) {
    const std::string d = absl::StrCat(dir_, "/layout-", name);
    auto layout = OciLayout::Create(d);
    EXPECT_TRUE(layout.ok()) << layout.status();
    auto img = layout->AddImage(ImageTars(), "linux/amd64");
    EXPECT_TRUE(img.ok()) << img.status();
    EXPECT_TRUE(layout->Tag("v1", img->manifest).ok());
    return d;
  }

  // Skopeo's push of the layout (tag v1) as it is; returns the reference.
  std::string PushWithSkopeo(const std::string& layout_dir,
                             const std::string& repo, bool all = false) {
    std::vector<std::string> argv = {"skopeo", "--insecure-policy", "copy",
                                     "--dest-tls-verify=false"};
    if (all) argv.push_back("--all");
    argv.push_back(absl::StrCat("oci:", layout_dir, ":v1"));
    argv.push_back(absl::StrCat("docker://", reg_->host(), "/", repo, ":v1"));
    std::string out;
    absl::Status st = testing::RunProcess(argv, &out);
    EXPECT_TRUE(st.ok()) << st;
    return Ref(repo + ":v1");
  }

  int UploadsIn(const std::string& repo) {
    int n = 0;
    const std::string needle =
        absl::StrCat("POST /v2/", repo, "/blobs/uploads");
    for (absl::string_view line : absl::StrSplit(reg_->Log(), '\n')) {
      if (absl::StrContains(line, needle)) ++n;
    }
    return n;
  }

  void ExpectSameTree(const std::string& a, const std::string& b,
                      const std::string& label) {
    TreeCompareOptions c;
    c.label = label;
    CompareTrees(a, b, c);
  }

  std::string bin_, dir_;
  std::unique_ptr<RegistryServer> reg_;
};

// The layer descriptors of a manifest: (mediaType, toc.digest annotation).
std::vector<std::pair<std::string, std::string>> Layers(
    const std::string& manifest) {
  std::vector<std::pair<std::string, std::string>> out;
  simdjson::dom::parser p;
  simdjson::dom::element root;
  EXPECT_EQ(p.parse(manifest).get(root), simdjson::SUCCESS) << manifest;
  simdjson::dom::array layers;
  if (root["layers"].get(layers) != simdjson::SUCCESS) return out;
  for (simdjson::dom::element l : layers) {
    std::string_view mt, toc;
    if (l["mediaType"].get(mt) != simdjson::SUCCESS) mt = "";
    if (l["annotations"][kTocDigest].get(toc) != simdjson::SUCCESS) toc = "";
    out.emplace_back(std::string(mt), std::string(toc));
  }
  return out;
}

// The "toc_digest"s of a push / image convert summary, in order.
std::vector<std::string> SummaryTocDigests(const std::string& json) {
  std::vector<std::string> out;
  simdjson::dom::parser p;
  simdjson::dom::element root;
  EXPECT_EQ(p.parse(json).get(root), simdjson::SUCCESS) << json;
  for (simdjson::dom::element m : root["manifests"].get_array()) {
    for (simdjson::dom::element l : m["layers"].get_array()) {
      std::string_view t;
      if (l["toc_digest"].get(t) == simdjson::SUCCESS) {
        out.emplace_back(t);
      }
    }
  }
  return out;
}

uint64_t SummaryNumber(const std::string& json, const char* key) {
  simdjson::dom::parser p;
  simdjson::dom::element root;
  EXPECT_EQ(p.parse(json).get(root), simdjson::SUCCESS) << json;
  uint64_t v = 0;
  EXPECT_EQ(root[key].get(v), simdjson::SUCCESS) << json;
  return v;
}

TEST_F(PushCliTest, PushLayoutPullsAndMountsLikeTheOriginal) {
  const std::string layout = Layout("orig");
  const std::string orig = PushWithSkopeo(layout, "test/orig");
  const std::string conv = Ref("test/conv:v1");
  RunResult push = Networked({"push", "oci:" + layout + ":v1", conv});
  ASSERT_EQ(push.exit_code, 0) << push.err;
  EXPECT_TRUE(absl::StrContains(push.err, "layer 3/3")) << push.err;

  // Every layer is eStargz with its TOC digest, as the summary says.
  const std::vector<std::pair<std::string, std::string>> layers =
      Layers(Raw("docker://" + conv));
  ASSERT_EQ(layers.size(), 3u);
  const std::vector<std::string> tocs = SummaryTocDigests(push.out);
  ASSERT_EQ(tocs.size(), 3u) << push.out;
  for (size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ(layers[i].first, "application/vnd.oci.image.layer.v1.tar+gzip");
    EXPECT_EQ(layers[i].second, tocs[i]);
    EXPECT_TRUE(absl::StartsWith(tocs[i], "sha256:"));
  }

  const std::string a = Pull(orig, "orig"), b = Pull(conv, "conv");
  ExpectSameTree(a, b, "pull of the original vs pull of the push");
  EXPECT_EQ(testing::ReadFile(b + "/etc/motd"), "layer 3\n");
  EXPECT_NE(access((b + "/etc/remove-me").c_str(), F_OK), 0);
  EXPECT_NE(access((b + "/opq/old").c_str(), F_OK), 0);

  // A second push finds every blob there.
  const int uploads = UploadsIn("test/conv");
  EXPECT_GE(uploads, 4);  // three layers and the config
  RunResult again = Networked({"push", "oci:" + layout + ":v1", conv});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(SummaryNumber(again.out, "uploaded"), 0u) << again.out;
  EXPECT_EQ(SummaryNumber(again.out, "skipped"), 4u) << again.out;
  EXPECT_EQ(UploadsIn("test/conv"), uploads);
  EXPECT_EQ(SummaryTocDigests(again.out), tocs);

  // And `lazypull mount` serves it lazily.
  std::string why = testing::FuseUnavailableReason();
  if (!why.empty()) {
    std::cout << "SKIPPED the mount: " << why << std::endl;
    return;
  }
  testing::MountJanitor janitor;
  const std::string mnt = dir_ + "/mnt";
  mkdir(mnt.c_str(), 0755);
  RunResult m = Networked(
      {"mount", conv, mnt, "--cache-dir", dir_ + "/cache", "--wait-prefetch"});
  ASSERT_EQ(m.exit_code, 0) << m.err << m.out;
  janitor.Track(mnt);
  TreeCompareOptions c;
  c.label = "lazy mount of the push vs pull of the original";
  c.skip_dir_nlink = true;  // overlayfs counts merged directories its way
  c.skip_mtime = {""};      // the merged root shows the top layer's
  CompareTrees(mnt, a, c);
  RunResult u = Lazypull({"unmount", mnt});
  EXPECT_EQ(u.exit_code, 0) << u.err;
}

TEST_F(PushCliTest, PushDirectory) {
  const std::string root = dir_ + "/rootfs";
  mkdir(root.c_str(), 0755);
  mkdir((root + "/bin").c_str(), 0755);
  mkdir((root + "/tmp").c_str(), 01777);
  std::ofstream(root + "/bin/tool") << Payload(200 << 10, 9);
  chmod((root + "/bin/tool").c_str(), 04755);
  std::ofstream(root + "/bin/a") << "shared";
  ASSERT_EQ(link((root + "/bin/a").c_str(), (root + "/bin/b").c_str()), 0);
  ASSERT_EQ(symlink("/etc/passwd", (root + "/outside").c_str()), 0);
  ASSERT_EQ(mknod((root + "/null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  ASSERT_EQ(mkfifo((root + "/fifo").c_str(), 0600), 0);
  ASSERT_EQ(lchown((root + "/bin/a").c_str(), 1234, 5678), 0);
  ASSERT_EQ(setxattr((root + "/bin/tool").c_str(), "user.k", "v", 1, 0), 0);
  const std::string deep = root + "/" + std::string(150, 'd');
  mkdir(deep.c_str(), 0700);
  std::ofstream(deep + "/" + std::string(150, 'f')) << "long";
  // Whole-second times: a tar keeps seconds.
  for (const std::string& p : std::vector<std::string>{
           "/bin/tool", "/bin/a", "/outside", "/null", "/fifo",
           "/" + std::string(150, 'd') + "/" + std::string(150, 'f'),
           "/" + std::string(150, 'd'), "/bin", "/tmp", ""}) {
    struct timespec ts[2] = {{1600000000, 0}, {1600000000, 0}};
    ASSERT_EQ(utimensat(AT_FDCWD, (root + p).c_str(), ts, AT_SYMLINK_NOFOLLOW),
              0)
        << p;
  }
  const std::string ref = Ref("test/dir:v1");
  RunResult r = Networked({"push", root, ref});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::pair<std::string, std::string>> layers =
      Layers(Raw("docker://" + ref));
  ASSERT_EQ(layers.size(), 1u);
  EXPECT_FALSE(layers[0].second.empty());
  ExpectSameTree(root, Pull(ref, "dir"), "directory vs pull of its push");
  // The config says when: as new as the newest file (every time above).
  std::string config;
  ASSERT_TRUE(testing::RunProcess({"skopeo", "inspect", "--config",
                                   "--tls-verify=false", "docker://" + ref},
                                  &config)
                  .ok());
  EXPECT_TRUE(
      absl::StrContains(config, "\"created\": \"2020-09-13T12:26:40Z\""))
      << config;
  // The same tree pushed again: nothing uploaded.
  RunResult again = Networked({"push", root, ref});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(SummaryNumber(again.out, "uploaded"), 0u) << again.out;
}

TEST_F(PushCliTest, ZstdChunked) {
  const std::string layout = Layout("zstd");
  const std::string orig = PushWithSkopeo(layout, "test/zorig");
  const std::string conv = Ref("test/zstd:v1");
  RunResult push = Networked(
      {"push", "oci:" + layout + ":v1", conv, "--format", "zstd:chunked"});
  ASSERT_EQ(push.exit_code, 0) << push.err;
  const std::string raw = Raw("docker://" + conv);
  for (const auto& [mt, toc] : Layers(raw)) {
    EXPECT_EQ(mt, "application/vnd.oci.image.layer.v1.tar+zstd");
    EXPECT_FALSE(toc.empty());
  }
  EXPECT_TRUE(
      absl::StrContains(raw, "io.containers.zstd-chunked.manifest-checksum"));
  ExpectSameTree(Pull(orig, "zorig"), Pull(conv, "zstd"),
                 "pull of the original vs pull of the zstd:chunked push");
}

TEST_F(PushCliTest, ImageConvertRegistryToRegistryAndLayout) {
  // Two platforms, pushed as they are with skopeo --all.
  const std::string d = dir_ + "/layout-multi";
  auto layout = OciLayout::Create(d);
  ASSERT_TRUE(layout.ok());
  std::vector<std::string> tars = ImageTars();
  TarBuilder arm;
  arm.Dir("./");
  arm.File("arch", "arm64");
  auto amd = layout->AddImage(tars, "linux/amd64");
  auto arm_img = layout->AddImage({arm.Finish()}, "linux/arm64/v8");
  ASSERT_TRUE(amd.ok() && arm_img.ok());
  auto idx = layout->AddIndex({amd->manifest, arm_img->manifest});
  ASSERT_TRUE(idx.ok());
  ASSERT_TRUE(layout->Tag("v1", *idx).ok());
  const std::string src = PushWithSkopeo(d, "test/multi", /*all=*/true);

  // Registry to registry, every platform.
  const std::string all = Ref("test/multi-esgz:v1");
  RunResult r = Networked({"image", "convert", src, all});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string raw = Raw("docker://" + all);
  EXPECT_TRUE(absl::StrContains(raw, "\"amd64\"")) << raw;
  EXPECT_TRUE(absl::StrContains(raw, "\"arm64\"")) << raw;
  EXPECT_EQ(SummaryTocDigests(r.out).size(), 4u) << r.out;
  ExpectSameTree(Pull(src, "src-amd"), Pull(all, "esgz-amd"),
                 "amd64: original vs converted");
  const std::string arm_pulled =
      Pull(all, "esgz-arm", {"--platform", "linux/arm64"});
  EXPECT_EQ(testing::ReadFile(arm_pulled + "/arch"), "arm64");
  ExpectSameTree(Pull(src, "src-arm", {"--platform", "linux/arm64"}),
                 arm_pulled, "arm64: original vs converted");

  // Only one platform kept.
  const std::string one = Ref("test/multi-arm:v1");
  r = Networked({"image", "convert", src, one, "--platform", "linux/arm64"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string raw_one = Raw("docker://" + one);
  EXPECT_FALSE(absl::StrContains(raw_one, "\"amd64\"")) << raw_one;
  EXPECT_TRUE(absl::StrContains(raw_one, "\"arm64\"")) << raw_one;
  EXPECT_EQ(SummaryTocDigests(r.out).size(), 1u) << r.out;

  // Registry to an OCI layout skopeo reads.
  const std::string out_layout = dir_ + "/converted-layout";
  r = Networked({"image", "convert", src, "oci:" + out_layout + ":conv",
                 "--platform", "linux/amd64"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string inspect;
  absl::Status st = testing::RunProcess(
      {"skopeo", "inspect", "oci:" + out_layout + ":conv"}, &inspect);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(absl::StrContains(inspect, "\"Architecture\": \"amd64\""))
      << inspect;
  st = testing::RunProcess(
      {"skopeo", "inspect", "--raw", "oci:" + out_layout + ":conv"}, &inspect);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(absl::StrContains(inspect, "index.v1+json")) << inspect;

  // And back from that layout to a registry with `push`.
  const std::string back = Ref("test/from-layout:v1");
  r = Networked({"push", "oci:" + out_layout + ":conv", back});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectSameTree(Pull(src, "src-amd2"), Pull(back, "back"),
                 "amd64: original vs layout pushed back");

  // A bad source fails with a message and tags nothing.
  r = Networked(
      {"image", "convert", Ref("test/absent:v1"), Ref("test/never:v1")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "test/absent")) << r.err;
}

TEST_F(PushCliTest, UsageErrors) {
  RunResult r = Lazypull({"push", dir_ + "/no-such-dir", Ref("x/y:v1")});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "image convert")) << r.err;
  r = Lazypull(
      {"image", "convert", "oci:" + dir_, Ref("x/y:v1"), "--format", "zip"});
  EXPECT_EQ(r.exit_code, 2);
  r = Lazypull({"image", "frobnicate"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(absl::StrContains(r.err, "convert")) << r.err;
}

}  // namespace
}  // namespace lazypull
