// The FUSE watchdog (fuse/connection_watchdog.h) through real mounts: a
// server with page pushes (the default) runs one helper process; when the
// server is killed (SIGKILL: no cleanup of its own runs), the helper aborts
// its FUSE connection, says so in the server's log, and the mount answers
// ENOTCONN; a clean unmount stops the helper first (it logs nothing); with
// --no-push-pages there is none. (What it guards against, a pusher left in
// an uninterruptible wait on a page a read holds, the kernel gives no way to
// stage on demand; cache_mount_test's SIGKILL rounds met it by chance.)
//
// Needs root and /dev/fuse (tag `no-sandbox`); skips loudly otherwise.
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/testing/tar_builder.h"
#include "core/testing/test_layer.h"
#include "fuse/connection_watchdog.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

// The FUSE connection number (device minor) of the mount at `mountpoint`,
// from /proc/self/mountinfo; -1 if not found.
long ConnectionOf(const std::string& mountpoint) {
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  long found = -1;
  while (std::getline(f, line)) {
    std::vector<std::string> fields = absl::StrSplit(line, ' ');
    if (fields.size() < 5 || fields[4] != mountpoint) continue;
    const size_t colon = fields[2].find(':');
    if (colon != std::string::npos) {
      (void)absl::SimpleAtoi(fields[2].substr(colon + 1), &found);
    }
  }
  return found;
}

// A duplicate of one of `pid`'s /dev/fuse descriptors (pidfd_getfd): while
// it is open, the server's death alone does not end the connection, as when
// a thread of the dead server is stuck; -1 if none could be taken.
int TakeFuseFd(pid_t pid) {
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return -1;
  int out = -1;
  DIR* d = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  while (d != nullptr && out < 0) {
    struct dirent* e = readdir(d);
    if (e == nullptr) break;
    int fd = 0;
    if (!absl::SimpleAtoi(e->d_name, &fd)) continue;
    char target[256] = {};
    const std::string link = absl::StrCat("/proc/", pid, "/fd/", fd);
    if (readlink(link.c_str(), target, sizeof(target) - 1) > 0 &&
        std::string(target) == "/dev/fuse") {
      out = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
    }
  }
  if (d != nullptr) closedir(d);
  close(pidfd);
  return out;
}

class WatchdogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_FUSE();
    TarBuilder tar;
    tar.Dir("d/");
    for (int i = 0; i < 20; ++i) {
      tar.File(absl::StrCat("d/f", i), RandomBytes(70000 + 1000 * i, i + 3));
    }
    layer_ = ConvertTar(tar.Finish(), "estargz");
    ASSERT_FALSE(layer_.blob.empty());
  }
  void TearDown() override { janitor_.DetachAll(); }

  LayerMount Mount(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"--toc-digest", layer_.toc_digest};
    args.insert(args.end(), extra.begin(), extra.end());
    LayerMount m = MountLayer(&janitor_, layer_.blob, args);
    EXPECT_TRUE(m.ok()) << m.result.err;
    EXPECT_GT(m.pid, 0);
    return m;
  }

  MountJanitor janitor_;
  ConvertedLayer layer_;
};

TEST_F(WatchdogTest, AKilledServersConnectionIsAborted) {
  LayerMount m = Mount();
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(WatchdogsOf(m.pid).size(), 1u) << m.Log();
  const long conn = ConnectionOf(m.mountpoint);
  ASSERT_GE(conn, 0);
  // Holding a copy of the server's /dev/fuse descriptor keeps its connection
  // alive past its death, as a thread of it stuck on a page lock would: only
  // the watchdog's abort can end it now.
  const int held = TakeFuseFd(m.pid);
  ASSERT_GE(held, 0) << strerror(errno);
  std::thread reader([&] {
    for (int i = 0; i < 20; ++i) {
      (void)ReadWholeFile(absl::StrCat(m.mountpoint, "/d/f", i));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  ASSERT_EQ(kill(m.pid, SIGKILL), 0);
  const std::string line = absl::StrCat(
      "FUSE watchdog: server ", m.pid,
      " died without unmounting; aborted connection(s) [", conn, "]");
  for (int i = 0; i < 250 && !absl::StrContains(m.Log(), line); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const bool aborted = absl::StrContains(m.Log(), line);
  EXPECT_TRUE(aborted) << m.Log();
  if (aborted) {
    // (A name never looked up: the kernel must ask the server.)
    struct stat st;
    EXPECT_NE(stat((m.mountpoint + "/never-looked-up").c_str(), &st), 0);
    EXPECT_EQ(errno, ENOTCONN);
  }
  close(held);  // (without the abort, this is what ends the connection)
  reader.join();
  EXPECT_EQ(UnmountLayer(m.mountpoint).exit_code, 0);
}

TEST_F(WatchdogTest, ACleanUnmountStopsItFirst) {
  LayerMount m = Mount();
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(WatchdogsOf(m.pid).size(), 1u) << m.Log();
  EXPECT_EQ(ReadWholeFile(m.mountpoint + "/d/f3").data.size(), 73000u);
  EXPECT_EQ(UnmountLayer(m.mountpoint).exit_code, 0);
  EXPECT_TRUE(WatchdogsOf(m.pid).empty());
  EXPECT_FALSE(absl::StrContains(m.Log(), "FUSE watchdog")) << m.Log();
}

TEST_F(WatchdogTest, NoneWithoutPushes) {
  LayerMount m = Mount({"--no-push-pages"});
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(WatchdogsOf(m.pid).empty());
  EXPECT_EQ(UnmountLayer(m.mountpoint).exit_code, 0);
}

TEST(ConnectionWatchdogTest, RefusesAnUnknownConnection) {
  auto w = ConnectionWatchdog::Start({999999});
  EXPECT_EQ(w.status().code(), absl::StatusCode::kFailedPrecondition)
      << w.status();
}

}  // namespace
}  // namespace lazypull::testing
