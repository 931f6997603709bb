#include "fetch/reference.h"

#include "gtest/gtest.h"

namespace lazypull {
namespace {

const char kHex[] =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

TEST(ImageReferenceTest, DockerHubShortNames) {
  auto r = ImageReference::Parse("alpine");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->registry, "docker.io");
  EXPECT_EQ(r->repository, "library/alpine");
  EXPECT_EQ(r->tag, "latest");
  EXPECT_EQ(r->ApiHost(), "registry-1.docker.io");
  EXPECT_EQ(r->String(), "docker.io/library/alpine:latest");

  r = ImageReference::Parse("user/app:1.2");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->registry, "docker.io");
  EXPECT_EQ(r->repository, "user/app");
  EXPECT_EQ(r->tag, "1.2");

  r = ImageReference::Parse("docker.io/ubuntu:22.04");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->repository, "library/ubuntu");
  r = ImageReference::Parse("index.docker.io/library/busybox");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->registry, "docker.io");
  EXPECT_EQ(r->repository, "library/busybox");
}

TEST(ImageReferenceTest, RegistriesWithPortsAndDigests) {
  auto r = ImageReference::Parse("127.0.0.1:5000/team/app:v1");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->registry, "127.0.0.1:5000");
  EXPECT_EQ(r->ApiHost(), "127.0.0.1:5000");
  EXPECT_EQ(r->repository, "team/app");
  EXPECT_EQ(r->tag, "v1");
  EXPECT_FALSE(r->digest.has_value());

  r = ImageReference::Parse(std::string("localhost/app@sha256:") + kHex);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->registry, "localhost");
  EXPECT_EQ(r->repository, "app");
  ASSERT_TRUE(r->digest.has_value());
  EXPECT_EQ(r->ManifestSelector(), std::string("sha256:") + kHex);
  EXPECT_EQ(r->String(), std::string("localhost/app@sha256:") + kHex);

  r = ImageReference::Parse(std::string("ghcr.io/o/r:t@sha256:") + kHex);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tag, "t");
  EXPECT_EQ(r->ManifestSelector(), std::string("sha256:") + kHex);
  EXPECT_EQ(r->String(), std::string("ghcr.io/o/r:t@sha256:") + kHex);

  r = ImageReference::Parse("localhost:5000/a.b/c_d/e--f:x");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->repository, "a.b/c_d/e--f");
}

TEST(ImageReferenceTest, Rejects) {
  for (const char* bad : {"", "Alpine", "https://ghcr.io/x", "app:", "app:-x",
                          "a//b", "a/b/", "/a", "ghcr.io/", "app@sha256:123",
                          "app@md5:abc", "a_-b", "ghcr.io/o/r:t@"}) {
    EXPECT_FALSE(ImageReference::Parse(bad).ok()) << bad;
  }
  auto r = ImageReference::Parse("UPPER/case");
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace lazypull
