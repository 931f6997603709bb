#include "fetch/manifest.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

const char kD1[] =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const char kD2[] =
    "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const char kD3[] =
    "sha256:3333333333333333333333333333333333333333333333333333333333333333";

std::string Entry(const char* digest, const std::string& platform_json) {
  return std::string("{\"mediaType\":\"") + kOciManifestType +
         "\",\"digest\":\"" + digest +
         "\",\"size\":10,\"platform\":" + platform_json + "}";
}

TEST(PlatformTest, ParseAndMatch) {
  auto p = Platform::Parse("linux/x86_64");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->String(), "linux/amd64");
  EXPECT_FALSE(Platform::Parse("linux").ok());
  EXPECT_FALSE(Platform::Parse("linux/arm/v7/x").ok());
  Platform arm64 = *Platform::Parse("linux/arm64");
  EXPECT_TRUE(arm64.Matches({"linux", "arm64", "v8"}));
  EXPECT_TRUE(arm64.Matches({"linux", "aarch64", ""}));
  EXPECT_FALSE(arm64.Matches({"linux", "arm", "v8"}));
  Platform armv6 = *Platform::Parse("linux/arm/v6");
  EXPECT_FALSE(armv6.Matches({"linux", "arm", ""}));  // default v7
  EXPECT_TRUE(armv6.Matches({"linux", "arm", "v6"}));
  EXPECT_EQ(Platform::Host().os, "linux");
  // 32-bit ARM hosts are named as index entries name them.
  EXPECT_EQ(Platform::FromMachine("armv7l").String(), "linux/arm/v7");
  EXPECT_EQ(Platform::FromMachine("armv6l").String(), "linux/arm/v6");
  EXPECT_EQ(Platform::FromMachine("armv8l").String(), "linux/arm/v7");
  EXPECT_EQ(Platform::FromMachine("aarch64").String(), "linux/arm64/v8");
  EXPECT_EQ(Platform::FromMachine("x86_64").String(), "linux/amd64");
  auto arm = Platform::Parse("linux/arm/v7");
  ASSERT_TRUE(arm.ok());
  EXPECT_TRUE(Platform::FromMachine("armv7l").Matches(*arm));
  EXPECT_FALSE(Platform::FromMachine("armv6l").Matches(*arm));
}

TEST(ManifestTest, IndexSelection) {
  std::string json =
      std::string("{\"schemaVersion\":2,\"mediaType\":\"") + kOciIndexType +
      "\",\"manifests\":[" +
      Entry(kD1,
            "{\"os\":\"linux\",\"architecture\":\"arm64\","
            "\"variant\":\"v8\"}") +
      "," + Entry(kD2, "{\"os\":\"linux\",\"architecture\":\"amd64\"}") + "," +
      Entry(kD3, "{\"os\":\"unknown\",\"architecture\":\"unknown\"}") + "]}";
  ASSERT_EQ(*SniffManifestKind(json), ManifestKind::kIndex);
  auto idx = ParseImageIndex(json);
  ASSERT_TRUE(idx.ok()) << idx.status();
  ASSERT_EQ(idx->manifests.size(), 3u);
  auto d = SelectPlatform(*idx, *Platform::Parse("linux/amd64"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->digest.ToString(), kD2);
  d = SelectPlatform(*idx, *Platform::Parse("linux/arm64"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->digest.ToString(), kD1);
  d = SelectPlatform(*idx, *Platform::Parse("windows/amd64"));
  ASSERT_FALSE(d.ok());
  EXPECT_TRUE(
      absl::StrContains(d.status().message(), "linux/arm64/v8, linux/amd64"))
      << d.status();
}

TEST(ManifestTest, IndexEntryWithoutPlatform) {
  const std::string json =
      std::string("{\"schemaVersion\":2,\"manifests\":[") +
      Entry(kD1, "{\"os\":\"linux\",\"architecture\":\"s390x\"}") + "," +
      "{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\","
      "\"digest\":\"" +
      kD2 + "\",\"size\":10}]}";
  auto idx = ParseImageIndex(json);
  ASSERT_TRUE(idx.ok()) << idx.status();
  // A platform that is named wins; else the entry without one.
  auto d = SelectPlatform(*idx, *Platform::Parse("linux/s390x"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->digest.ToString(), kD1);
  d = SelectPlatform(*idx, *Platform::Parse("linux/amd64"));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->digest.ToString(), kD2);
  EXPECT_FALSE(d->platform.has_value());
  // Then the config decides.
  ImageConfig c;
  EXPECT_TRUE(CheckConfigPlatform(c, *Platform::Parse("linux/amd64")).ok());
  c.platform = *Platform::Parse("linux/amd64");
  EXPECT_TRUE(CheckConfigPlatform(c, *Platform::Parse("linux/amd64")).ok());
  c.platform = *Platform::Parse("linux/arm64/v8");
  EXPECT_TRUE(CheckConfigPlatform(c, *Platform::Parse("linux/arm64")).ok());
  absl::Status st = CheckConfigPlatform(c, *Platform::Parse("linux/amd64"));
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(st.message(), "linux/arm64")) << st;
}

TEST(ManifestTest, ManifestAndConfig) {
  std::string m =
      std::string("{\"schemaVersion\":2,\"mediaType\":\"") +
      kDockerManifestType + "\",\"config\":{\"mediaType\":\"x\",\"digest\":\"" +
      kD1 + "\",\"size\":5},\"layers\":[{\"mediaType\":\"l\",\"digest\":\"" +
      kD2 + "\",\"size\":7,\"annotations\":{\"a\":\"b\"}}]}";
  ASSERT_EQ(*SniffManifestKind(m), ManifestKind::kManifest);
  auto man = ParseImageManifest(m);
  ASSERT_TRUE(man.ok()) << man.status();
  EXPECT_EQ(man->config.size, 5);
  ASSERT_EQ(man->layers.size(), 1u);
  EXPECT_EQ(man->layers[0].annotations.at("a"), "b");
  auto cfg =
      ParseImageConfig(std::string("{\"os\":\"linux\",\"architecture\":"
                                   "\"amd64\",\"rootfs\":{\"diff_ids\":[\"") +
                       kD3 + "\"]}}");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->diff_ids[0].ToString(), kD3);
  EXPECT_TRUE(cfg->env.empty());
  EXPECT_EQ(cfg->user, "");

  auto run = ParseImageConfig(
      std::string("{\"config\":{\"Env\":[\"PATH=/usr/bin\",\"A=b=c\"],"
                  "\"WorkingDir\":\"/srv\",\"User\":\"nobody:nogroup\"},"
                  "\"rootfs\":{\"diff_ids\":[\"") +
      kD3 + "\"]}}");
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->env, (std::vector<std::string>{"PATH=/usr/bin", "A=b=c"}));
  EXPECT_EQ(run->working_dir, "/srv");
  EXPECT_EQ(run->user, "nobody:nogroup");
  EXPECT_TRUE(ParseImageConfig(std::string("{\"config\":null,\"rootfs\":{"
                                           "\"diff_ids\":[]}}"))
                  .ok());
  EXPECT_FALSE(ParseImageConfig(std::string("{\"config\":{\"Env\":[1]},"
                                            "\"rootfs\":{\"diff_ids\":[]}}"))
                   .ok());
}

TEST(ManifestTest, Rejects) {
  EXPECT_FALSE(SniffManifestKind("[]").ok());
  EXPECT_FALSE(SniffManifestKind("{\"mediaType\":\"text/plain\"}").ok());
  auto s1 = SniffManifestKind("{\"schemaVersion\":1,\"fsLayers\":[]}");
  ASSERT_FALSE(s1.ok());
  EXPECT_EQ(s1.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(
      ParseImageManifest("{\"config\":{\"digest\":\"md5:x\",\"size\":1},"
                         "\"layers\":[]}")
          .ok());
  EXPECT_FALSE(ParseImageManifest(std::string("{\"config\":{\"digest\":\"") +
                                  kD1 + "\",\"size\":-1},\"layers\":[]}")
                   .ok());
  EXPECT_FALSE(ParseImageConfig("{\"rootfs\":{}}").ok());
}

// A key held twice in one object, at any depth: Go and Python take the
// last, simdjson the first, so the document means different images to
// different clients ("layers":[L] then "layers":[] pulled L here and
// nothing elsewhere).
TEST(ManifestTest, DuplicateKeysAreRefused) {
  const std::string layer = std::string("{\"mediaType\":\"l\",\"digest\":\"") +
                            kD2 + "\",\"size\":7}";
  const std::string config = std::string("{\"mediaType\":\"x\",\"digest\":\"") +
                             kD1 + "\",\"size\":5}";
  const std::string ok = "{\"schemaVersion\":2,\"config\":" + config +
                         ",\"layers\":[" + layer + "]}";
  ASSERT_TRUE(ParseImageManifest(ok).ok());
  absl::Status s =
      ParseImageManifest("{\"schemaVersion\":2,\"config\":" + config +
                         ",\"layers\":[" + layer + "],\"layers\":[]}")
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(std::string(s.message()).find("\"layers\" twice"),
            std::string::npos)
      << s;
  // Inside a descriptor of the array.
  std::string nested = layer;
  nested.insert(nested.size() - 1, ",\"size\":8");
  EXPECT_FALSE(ParseImageManifest("{\"schemaVersion\":2,\"config\":" + config +
                                  ",\"layers\":[" + nested + "]}")
                   .ok());
}

}  // namespace
}  // namespace lazypull
