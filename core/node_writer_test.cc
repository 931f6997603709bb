#include "core/node_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

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

// An owner past 32 bits is refused (it was cut to its low bits: 2^32+1000
// became 1000; 2^32-1 means "leave it" to chown), as the converter refuses
// it; one in range is applied.
TEST(NodeWriterTest, OwnersBeyond32BitsAreRefused) {
  const std::string dir = TempDir();
  ScopedFd d(open(dir.c_str(), O_RDONLY | O_DIRECTORY));
  ASSERT_TRUE(d.valid());
  const int f = openat(d.get(), "f", O_WRONLY | O_CREAT, 0600);
  ASSERT_GE(f, 0);
  close(f);
  for (auto [uid, gid] : {std::pair<uint64_t, uint64_t>{(1ull << 32) + 1000, 0},
                          {0, (1ull << 32) + 7},
                          {4294967295ull, 0}}) {
    absl::Status st = SetNodeOwner(d.get(), "f", uid, gid, "f");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument)
        << uid << " " << gid;
    EXPECT_NE(std::string(st.message()).find("beyond 32 bits"),
              std::string::npos)
        << st;
  }
  // (Applied where chown to another user is allowed: not in a sandbox's
  // user namespace.)
  if (geteuid() == 0 && SetNodeOwner(d.get(), "f", 1000, 1000, "f").ok()) {
    struct stat st;
    ASSERT_EQ(fstatat(d.get(), "f", &st, 0), 0);
    EXPECT_EQ(st.st_uid, 1000u);
  }
}

}  // namespace
}  // namespace lazypull
