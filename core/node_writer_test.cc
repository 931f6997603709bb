#include "core/node_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

std::string TempDir() {
  std::string t = absl::StrCat(std::getenv("TEST_TMPDIR"), "/nwXXXXXX");
  EXPECT_NE(mkdtemp(t.data()), nullptr);
  return t;
}

// A mode is applied to the node itself, never through a symlink that
// stands in its place (one swapped in by whoever may write to the
// directory took extract's setuid mode to a file outside the tree).
TEST(NodeWriterTest, SetNodeModeNeverFollowsASymlink) {
  const std::string dir = TempDir();
  const std::string outside = dir + "/outside";
  const int o = open(outside.c_str(), O_WRONLY | O_CREAT, 0600);
  ASSERT_GE(o, 0);
  close(o);
  ASSERT_EQ(mkdir((dir + "/tree").c_str(), 0755), 0);
  ASSERT_EQ(symlink(outside.c_str(), (dir + "/tree/f").c_str()), 0);
  ScopedFd tree(open((dir + "/tree").c_str(), O_RDONLY | O_DIRECTORY));
  ASSERT_TRUE(tree.valid());
  EXPECT_TRUE(SetNodeMode(tree.get(), "f", 04777, "f").ok());
  struct stat st;
  ASSERT_EQ(stat(outside.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // A regular file (and the directory itself, "") gets its mode.
  const int g = openat(tree.get(), "g", O_WRONLY | O_CREAT, 0600);
  ASSERT_GE(g, 0);
  close(g);
  ASSERT_TRUE(SetNodeMode(tree.get(), "g", 04755, "g").ok());
  ASSERT_TRUE(SetNodeMode(tree.get(), "", 0750, ".").ok());
  ASSERT_EQ(stat((dir + "/tree/g").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
  ASSERT_EQ(stat((dir + "/tree").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  // A missing node is an error naming it.
  absl::Status s = SetNodeMode(tree.get(), "missing", 0644, "missing");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("missing"), std::string::npos) << s;
}

}  // namespace
}  // namespace lazypull
