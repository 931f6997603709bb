#include "cli/mount_record.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace lazypull::cli {
namespace {

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

// A newline in a mountpoint (a legal path) must not end its line: the rest
// was read as a record line of its own ("run /home" made unmount's clean-up
// detach every mount under /home).
TEST(MountRecordTest, PathsWithNewlinesAndBackslashesRoundTrip) {
  const std::string path = TempPath("record-newline");
  MountRecord r;
  r.mountpoint = "/tmp/m\nrun /home";
  r.image_ref = "example.com/a:b";
  r.run_dir = "/var/lib/x\\y\nimage z/mounts/1";
  WriteMountRecord(path, r);
  std::optional<MountRecord> back = ReadMountRecord(path);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->pid, getpid());
  EXPECT_EQ(back->mountpoint, r.mountpoint);
  EXPECT_EQ(back->image_ref, r.image_ref);
  EXPECT_EQ(back->run_dir, r.run_dir);
  EXPECT_NE(back->start_ticks, 0u);
}

TEST(MountRecordTest, ABlobMountHasNoImageOrRunDirectory) {
  const std::string path = TempPath("record-blob");
  MountRecord r;
  r.mountpoint = "/mnt/plain path";
  WriteMountRecord(path, r);
  std::optional<MountRecord> back = ReadMountRecord(path);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->mountpoint, "/mnt/plain path");
  EXPECT_TRUE(back->image_ref.empty());
  EXPECT_TRUE(back->run_dir.empty());
}

// A record written before fields were escaped still reads.
TEST(MountRecordTest, AnOlderRecordReads) {
  const std::string path = TempPath("record-old");
  std::ofstream(path) << "123\n/mnt/a\\qb\nimage r:t\nstart 9\nrun /x/y\n";
  std::optional<MountRecord> back = ReadMountRecord(path);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->pid, 123);
  EXPECT_EQ(back->mountpoint, "/mnt/a\\qb");
  EXPECT_EQ(back->image_ref, "r:t");
  EXPECT_EQ(back->start_ticks, 9u);
  EXPECT_EQ(back->run_dir, "/x/y");
}

}  // namespace
}  // namespace lazypull::cli
