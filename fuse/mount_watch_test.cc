#include "fuse/mount_watch.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace lazypull {
namespace {

// A tmpfs at a fresh directory of the test's, and its mount table entry.
class MountWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(geteuid(), 0u) << "mounts need root";
    char real[PATH_MAX];
    ASSERT_NE(realpath(std::getenv("TEST_TMPDIR"), real), nullptr);
    dir_ = std::string(real) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    mkdir(dir_.c_str(), 0755);
    mnt_ = dir_ + "/mnt";
    mkdir(mnt_.c_str(), 0755);
    ASSERT_EQ(mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=1m"), 0);
    std::optional<MountEntry> e = TopMountAt(mnt_);
    ASSERT_TRUE(e.has_value());
    entry_ = *e;
  }
  void TearDown() override {
    for (const std::string& p : {dir_ + "/moved/mnt", mnt_, mnt_}) {
      umount2(p.c_str(), MNT_DETACH);
    }
  }
  // Whether `gone` turns true within `wait`.
  static bool Within(const std::atomic<bool>& gone,
                     std::chrono::milliseconds wait) {
    const auto end = std::chrono::steady_clock::now() + wait;
    while (!gone.load() && std::chrono::steady_clock::now() < end) {
      usleep(20 * 1000);
    }
    return gone.load();
  }

  std::string dir_, mnt_;
  MountEntry entry_;
};

TEST_F(MountWatchTest, UmountIsSeen) {
  for (const bool lazy : {false, true}) {
    if (lazy) SetUp();
    std::atomic<bool> gone{false};
    MountWatch w(entry_, [&] { gone.store(true); });
    usleep(300 * 1000);
    EXPECT_FALSE(gone.load());
    ASSERT_EQ(umount2(mnt_.c_str(), lazy ? MNT_DETACH : 0), 0);
    EXPECT_TRUE(Within(gone, std::chrono::seconds(3))) << lazy;
  }
}

TEST_F(MountWatchTest, StackedMovedOrGoneBeforeTheWatchStarted) {
  std::atomic<bool> gone{false};
  {
    MountWatch w(entry_, [&] { gone.store(true); });
    // Another mount on top of it, then away again.
    ASSERT_EQ(mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=1m"), 0);
    usleep(300 * 1000);
    ASSERT_EQ(umount2(mnt_.c_str(), 0), 0);
    // Moved elsewhere (a parent renamed would do the same).
    const std::string moved = dir_ + "/moved";
    mkdir(moved.c_str(), 0755);
    mkdir((moved + "/mnt").c_str(), 0755);
    ASSERT_EQ(mount(mnt_.c_str(), (moved + "/mnt").c_str(), nullptr, MS_MOVE,
                    nullptr),
              0)
        << strerror(errno);
    EXPECT_FALSE(Within(gone, std::chrono::milliseconds(600)))
        << "a stacked or moved mount is not gone";
    ASSERT_EQ(umount2((moved + "/mnt").c_str(), 0), 0);
    EXPECT_TRUE(Within(gone, std::chrono::seconds(3)));
  }
  // Unmounted before a watch starts: seen at once.
  std::atomic<bool> gone2{false};
  MountWatch late(entry_, [&] { gone2.store(true); });
  EXPECT_TRUE(Within(gone2, std::chrono::seconds(2)));
}

}  // namespace
}  // namespace lazypull
