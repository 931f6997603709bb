#include "fuse/mount_table.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gtest/gtest.h"

namespace lazypull {
namespace {

TEST(MountTableTest, ListsTheRootAndProc) {
  std::vector<MountEntry> t = ReadMountTable();
  ASSERT_FALSE(t.empty());
  std::optional<MountEntry> root = TopMountAt("/");
  ASSERT_TRUE(root.has_value());
  struct stat st;
  ASSERT_EQ(stat("/", &st), 0);
  EXPECT_EQ(root->major, major(st.st_dev));
  EXPECT_EQ(root->minor, minor(st.st_dev));
  std::optional<MountEntry> proc = TopMountAt("/proc");
  ASSERT_TRUE(proc.has_value());
  EXPECT_EQ(proc->fstype, "proc");
  EXPECT_FALSE(TopMountAt("/proc/self").has_value());
}

TEST(MountTableTest, PathWithoutTouchingItKeepsTheLastComponent) {
  const std::string tmp = std::getenv("TEST_TMPDIR");
  char real[PATH_MAX];
  ASSERT_NE(realpath(tmp.c_str(), real), nullptr);
  const std::string dir = std::string(real) + "/d";
  mkdir(dir.c_str(), 0755);
  ASSERT_EQ(symlink(dir.c_str(), (tmp + "/link").c_str()), 0);
  // A symlinked parent is resolved; the last component is not.
  EXPECT_EQ(PathWithoutTouchingIt(tmp + "/link/x"), dir + "/x");
  EXPECT_EQ(PathWithoutTouchingIt(tmp + "/link"), std::string(real) + "/link");
  EXPECT_EQ(PathWithoutTouchingIt(tmp + "/d/"), dir);
  EXPECT_EQ(PathWithoutTouchingIt(dir + "/."), dir);
  ASSERT_EQ(chdir(dir.c_str()), 0);
  EXPECT_EQ(PathWithoutTouchingIt("y"), dir + "/y");
  EXPECT_EQ(PathWithoutTouchingIt("/"), "/");
}

}  // namespace
}  // namespace lazypull
