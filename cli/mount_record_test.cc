#include "cli/mount_record.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
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

// Records are trusted only from this user, in a directory only it writes: a
// /tmp/lazypull-UID another user made first could hold records naming a
// process of this user's for `unmount` to signal. Written without following
// a symlink planted in their place.
TEST(MountRecordTest, OnlyThisUsersOwnRecordsInAPrivateDirectory) {
  const std::string dir = TempPath("records-private");
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  const std::string path = dir + "/r.pid";
  MountRecord r;
  r.mountpoint = "/mnt/x";
  WriteMountRecord(path, r);
  ASSERT_TRUE(ReadMountRecord(path).has_value());
  // Writable by others: refused.
  ASSERT_EQ(chmod(path.c_str(), 0666), 0);
  EXPECT_FALSE(ReadMountRecord(path).has_value());
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  ASSERT_EQ(chmod(dir.c_str(), 0777), 0);
  EXPECT_FALSE(ReadMountRecord(path).has_value());
  WriteMountRecord(dir + "/other.pid", r);  // not written there either
  struct stat st;
  EXPECT_NE(lstat((dir + "/other.pid").c_str(), &st), 0);
  ASSERT_EQ(chmod(dir.c_str(), 0700), 0);
  // Another user's record (as root, made so with chown).
  // (Not where chown is refused: a sandbox's user namespace.)
  if (geteuid() == 0 && chown(path.c_str(), 12345, 12345) == 0) {
    EXPECT_FALSE(ReadMountRecord(path).has_value());
    ASSERT_EQ(chown(path.c_str(), 0, 0), 0);
  }
  // A symlink in a record's place is not followed.
  const std::string target = TempPath("records-target");
  std::ofstream(target) << "1\n/mnt/y\n";
  ASSERT_EQ(unlink(path.c_str()), 0);
  ASSERT_EQ(symlink(target.c_str(), path.c_str()), 0);
  EXPECT_FALSE(ReadMountRecord(path).has_value());
  const std::string planted = absl::StrCat(path, ".", getpid());
  ASSERT_EQ(symlink(target.c_str(), planted.c_str()), 0);
  WriteMountRecord(path, r);
  std::ifstream t(target);
  std::string first;
  std::getline(t, first);
  EXPECT_EQ(first, "1") << "the write followed a planted symlink";
}

}  // namespace
}  // namespace lazypull::cli
