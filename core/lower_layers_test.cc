#include "core/lower_layers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

std::string Layer(const std::string& name) {
  const std::string d = absl::StrCat(std::getenv("TEST_TMPDIR"), "/", name);
  EXPECT_EQ(mkdir(d.c_str(), 0755), 0) << d << ": " << strerror(errno);
  return d;
}

void Dir(const std::string& path, mode_t mode = 0755) {
  ASSERT_EQ(mkdir(path.c_str(), mode), 0) << path << ": " << strerror(errno);
  ASSERT_EQ(chmod(path.c_str(), mode), 0);
}

// An opaque directory as a rootless overlayfs reads it (a root one reads
// trusted.overlay.opaque, which only root may set; both are honoured).
void MakeOpaque(const std::string& path) {
  ASSERT_EQ(setxattr(path.c_str(), "user.overlay.opaque", "y", 1, 0), 0)
      << path << ": " << strerror(errno);
}

TEST(LowerLayersTest, TheTopmostLayerShowingAPathHasIt) {
  const std::string l0 = Layer("l0"), l1 = Layer("l1"), l2 = Layer("l2");
  Dir(l0 + "/a");
  Dir(l0 + "/a/b", 0700);
  std::ofstream(l0 + "/a/b/f") << "f";
  Dir(l1 + "/a");
  Dir(l2 + "/a");
  Dir(l2 + "/a/b", 0750);

  absl::StatusOr<LowerEntry> e = FindInLowers({l0, l1}, "a/b");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(S_ISDIR(e->st.st_mode));
  EXPECT_EQ(e->st.st_mode & 07777, 0700u);
  EXPECT_EQ(e->name, "b");
  e = FindInLowers({l0, l1, l2}, "a/b");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->st.st_mode & 07777, 0750u) << "not the topmost layer's";
  e = FindInLowers({l0, l1}, "a/b/f");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(S_ISREG(e->st.st_mode));
  EXPECT_TRUE(FindInLowers({l0, l1}, "").ok()) << "the root";
  EXPECT_TRUE(absl::IsNotFound(FindInLowers({l0, l1}, "a/x").status()));
  EXPECT_TRUE(absl::IsNotFound(FindInLowers({}, "a").status()));
}

// An opaque directory in a layer between hides what the ones below have
// under it, even where it has nothing of its own.
TEST(LowerLayersTest, AnOpaqueDirectoryBetweenHidesTheLayersBelow) {
  const std::string l0 = Layer("o0"), l1 = Layer("o1");
  Dir(l0 + "/a");
  Dir(l0 + "/a/b", 0700);
  Dir(l1 + "/a");
  ASSERT_NO_FATAL_FAILURE(MakeOpaque(l1 + "/a"));
  EXPECT_TRUE(absl::IsNotFound(FindInLowers({l0, l1}, "a/b").status()));
  EXPECT_TRUE(FindInLowers({l0, l1}, "a").ok()) << "the opaque one itself";
  std::vector<std::string> a = {"a"};
  ScopedFd root(open(l1.c_str(), O_RDONLY | O_DIRECTORY));
  EXPECT_TRUE(OpaqueOnPath(root.get(), a));
  ScopedFd root0(open(l0.c_str(), O_RDONLY | O_DIRECTORY));
  EXPECT_FALSE(OpaqueOnPath(root0.get(), a));
}

// A file, a symlink or a whiteout on the way hides the layers below; a
// symlink is never followed (it could lead out of the image).
TEST(LowerLayersTest, WhatHidesAPathAndSymlinksNotFollowed) {
  const std::string l0 = Layer("h0"), file = Layer("h1"), link = Layer("h2");
  Dir(l0 + "/a");
  Dir(l0 + "/a/b");
  std::ofstream(file + "/a") << "a file";
  ASSERT_EQ(symlink("/", (link + "/a").c_str()), 0);
  EXPECT_FALSE(FindInLowers({l0, file}, "a/b").ok());
  EXPECT_FALSE(FindInLowers({l0, link}, "a/b").ok());
  absl::StatusOr<LowerEntry> e = FindInLowers({l0, link}, "a");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_TRUE(S_ISLNK(e->st.st_mode));
  const std::string wh = Layer("h3");
  Dir(wh + "/a");
  if (mknod((wh + "/a/b").c_str(), S_IFCHR | 0600, makedev(0, 0)) != 0) {
    GTEST_SKIP() << "mknod needs CAP_MKNOD: " << strerror(errno);
  }
  EXPECT_TRUE(absl::IsNotFound(FindInLowers({l0, wh}, "a/b").status()));
}

}  // namespace
}  // namespace lazypull
