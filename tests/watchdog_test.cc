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
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/testing/tar_builder.h"
#include "core/testing/test_layer.h"
#include "fuse/connection_watchdog.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

// The pids of `__fuse-watchdog SERVER ...` processes (zombies excluded).
std::vector<pid_t> WatchdogsOf(pid_t server) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (struct dirent* e = readdir(d)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    std::ifstream f(absl::StrCat("/proc/", pid, "/cmdline"));
    std::string cmd((std::istreambuf_iterator<char>(f)),
                    std::istreambuf_iterator<char>());
    for (char& c : cmd) c = c == '\0' ? ' ' : c;
    if (absl::StrContains(cmd, absl::StrCat("__fuse-watchdog ", server, " "))) {
      out.push_back(pid);
    }
  }
  closedir(d);
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
  // Reads under way, then the server killed outright.
  std::thread reader([&] {
    for (int i = 0; i < 20; ++i) {
      (void)ReadWholeFile(absl::StrCat(m.mountpoint, "/d/f", i));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  ASSERT_EQ(kill(m.pid, SIGKILL), 0);
  reader.join();  // (hangs here if the connection lives on)
  const std::string line =
      absl::StrCat("FUSE watchdog: server ", m.pid, " died without unmounting");
  for (int i = 0; i < 250 && !absl::StrContains(m.Log(), line); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(absl::StrContains(m.Log(), line)) << m.Log();
  // (A name never looked up: the kernel must ask the server.)
  struct stat st;
  EXPECT_NE(stat((m.mountpoint + "/never-looked-up").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOTCONN);
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
