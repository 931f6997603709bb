// `lazypull mount` / `unmount` as a runtime drives them, around the cases
// that go wrong in the field: a server killed without cleaning up (its pid
// then reused), a mountpoint that is someone else's mount, a second mount
// on a live one, a stopped server, a mountpoint that does not exist.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/digest.h"
#include "core/testing/tar_builder.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull::testing {
namespace {

bool IsMountPoint(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StrContains(line, absl::StrCat(" ", path, " "))) return true;
  }
  return false;
}

class UnmountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (mounts)";
    if (access("/dev/fuse", R_OK | W_OK) != 0) {
      GTEST_SKIP() << "SKIPPED: /dev/fuse is not available";
    }
    base_ = MakeTempDir("unmount");
    TarBuilder b;
    b.Dir("./");
    b.File("hello", "hello\n");
    const std::string tar = base_ + "/layer.tar";
    std::ofstream(tar) << b.Finish();
    blob_ = base_ + "/layer.esgz";
    RunResult r =
        ::lazypull::testing::Run({LazypullBinary(), "convert", tar, blob_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  void TearDown() override {
    for (const std::string& m : cleanup_) umount2(m.c_str(), MNT_DETACH);
    // Only children not reaped yet: their pids cannot have been reused
    // (signalling a pid after its process is gone once killed another
    // test's server running alongside).
    for (pid_t p : kill_) {
      if (waitpid(p, nullptr, WNOHANG) != 0) continue;
      kill(p, SIGKILL);
      waitpid(p, nullptr, 0);
    }
  }

  // Mounts the layer at a new directory; returns the server's pid.
  pid_t Mount(const std::string& mp) {
    mkdir(mp.c_str(), 0755);
    RunResult r = ::lazypull::testing::Run(
        {LazypullBinary(), "mount", "--blob", blob_,
         "--insecure-skip-toc-verify", mp, "--cache-dir", base_ + "/cache"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    cleanup_.push_back(mp);
    const size_t p = r.out.find("(pid ");
    return p == std::string::npos ? 0 : std::atoi(r.out.c_str() + p + 5);
  }
  RunResult Unmount(const std::string& mp, bool force = false) {
    std::vector<std::string> argv = {LazypullBinary(), "unmount", mp};
    if (force) argv.push_back("--force");
    return ::lazypull::testing::Run(argv);
  }

  std::string base_, blob_;
  std::vector<std::string> cleanup_;
  std::vector<pid_t> kill_;  // children of this process
};

// A serving process raises its soft open-file limit to the hard one (an
// image of a hundred layers holds more than the usual 1024 descriptors).
TEST_F(UnmountTest, TheServerRaisesItsOpenFileLimit) {
  struct rlimit mine;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &mine), 0);
  if (mine.rlim_max <= 256) GTEST_SKIP() << "SKIPPED: hard limit too low";
  struct rlimit low = mine;
  low.rlim_cur = 256;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  const pid_t pid = Mount(base_ + "/mnt-limits");
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &mine), 0);
  ASSERT_GT(pid, 0);
  std::string soft;
  std::ifstream in(absl::StrCat("/proc/", pid, "/limits"));
  for (std::string line; std::getline(in, line);) {
    if (absl::StartsWith(line, "Max open files")) {
      std::vector<std::string> f =
          absl::StrSplit(line.substr(14), ' ', absl::SkipEmpty());
      ASSERT_GE(f.size(), 2u) << line;
      soft = f[0];
      EXPECT_EQ(f[0], f[1]) << line;
    }
  }
  EXPECT_NE(soft, "256");
  EXPECT_FALSE(soft.empty());
  EXPECT_EQ(Unmount(base_ + "/mnt-limits").exit_code, 0);
}

// The serving process holds nothing of its caller's: a descriptor the
// caller left open (a pipe capturing the command's output) is closed, or
// the caller would wait on it for the life of the mount; a log file that
// cannot be opened fails the mount, saying so, rather than serving with the
// caller's stderr.
TEST_F(UnmountTest, TheServerHoldsNoneOfItsCallersDescriptors) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);  // (inherited: no O_CLOEXEC)
  struct stat pst;
  ASSERT_EQ(fstat(p[1], &pst), 0);
  const pid_t pid = Mount(base_ + "/mnt-fds");
  close(p[1]);
  ASSERT_GT(pid, 0);
  const std::string fd_dir = absl::StrCat("/proc/", pid, "/fd");
  int seen = 0;
  for (const auto& e : std::filesystem::directory_iterator(fd_dir)) {
    ++seen;
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(e.path(), ec);
    EXPECT_NE(target, absl::StrCat("pipe:[", pst.st_ino, "]"))
        << "the server holds the caller's pipe as fd " << e.path().filename();
  }
  EXPECT_GT(seen, 3);
  // (Polled, so that a server holding it fails the test, not hangs it.)
  pollfd pfd{p[0], POLLIN, 0};
  ASSERT_EQ(poll(&pfd, 1, 5000), 1) << "a writer of the pipe is still open";
  char c;
  EXPECT_EQ(read(p[0], &c, 1), 0);
  close(p[0]);
  EXPECT_EQ(Unmount(base_ + "/mnt-fds").exit_code, 0);

  const std::string mp = base_ + "/mnt-nolog";
  mkdir(mp.c_str(), 0755);
  RunResult r = ::lazypull::testing::Run(
      {LazypullBinary(), "mount", "--blob", blob_, "--insecure-skip-toc-verify",
       mp, "--cache-dir", base_ + "/cache", "--log-file",
       base_ + "/no/such/dir/x.log"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "log file")) << r.err;
  EXPECT_FALSE(IsMountPoint(mp));
}

// A connection aborted through fusectl ends the server, which leaves no dead
// mount behind (libfuse skips the unmount of an aborted connection: the
// mount stayed, answering ENOTCONN, while the log said "unmounted").
TEST_F(UnmountTest, AnAbortedConnectionLeavesNoDeadMount) {
  const std::string mp = base_ + "/mnt-abort";
  const pid_t pid = Mount(mp);
  ASSERT_GT(pid, 0);
  struct stat st;
  ASSERT_EQ(stat(mp.c_str(), &st), 0);
  const std::string abort_file =
      absl::StrCat("/sys/fs/fuse/connections/", minor(st.st_dev), "/abort");
  {
    std::ofstream a(abort_file);
    if (!a) GTEST_SKIP() << "SKIPPED: no fusectl (" << abort_file << ")";
    a << "1";
  }
  for (int i = 0; i < 500 && kill(pid, 0) == 0; ++i) usleep(10000);
  EXPECT_NE(kill(pid, 0), 0) << "the server outlived its aborted connection";
  for (int i = 0; i < 100 && IsMountPoint(mp); ++i) usleep(10000);
  EXPECT_FALSE(IsMountPoint(mp)) << "a dead mount stayed";
  if (IsMountPoint(mp)) umount2(mp.c_str(), MNT_DETACH);
}

// A --blob mount's bad flag values are usage errors (exit 2, as an image
// mount's), said by the command before any serving process starts.
TEST_F(UnmountTest, BadBlobMountFlagValuesAreUsageErrors) {
  const std::string mp = base_ + "/mnt-flags";
  mkdir(mp.c_str(), 0755);
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--toc-digest", "bogus"},
        std::vector<std::string>{"--insecure-skip-toc-verify", "--cache-size",
                                 "10Q"}}) {
    std::vector<std::string> argv = {
        LazypullBinary(), "mount",         "--blob", blob_, mp,
        "--cache-dir",    base_ + "/cache"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    RunResult r = ::lazypull::testing::Run(argv);
    EXPECT_EQ(r.exit_code, 2) << extra[1] << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(
        r.err, extra[0] == "--toc-digest" ? "--toc-digest" : "is not a size"))
        << r.err;
    EXPECT_FALSE(IsMountPoint(mp));
  }
}

TEST_F(UnmountTest, OnlyLazypullMountsAreUnmounted) {
  const std::string tfs = base_ + "/tmpfs";
  mkdir(tfs.c_str(), 0755);
  ASSERT_EQ(mount("none", tfs.c_str(), "tmpfs", 0, nullptr), 0);
  cleanup_.push_back(tfs);
  std::ofstream(tfs + "/important") << "data";
  RunResult u = Unmount(tfs, /*force=*/true);
  EXPECT_NE(u.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(u.err, "not one of lazypull's")) << u.err;
  EXPECT_EQ(ReadFile(tfs + "/important"), "data");
  // Not a mount point at all.
  RunResult v = Unmount(base_);
  EXPECT_NE(v.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(v.err, "not a mount point")) << v.err;
}

TEST_F(UnmountTest, AKilledServersReusedPidIsNeverSignalled) {
  const std::string mp = base_ + "/mnt";
  const pid_t server = Mount(mp);
  ASSERT_GT(server, 0);
  EXPECT_EQ(ReadFile(mp + "/hello"), "hello\n");
  ASSERT_EQ(kill(server, SIGKILL), 0);
  // (The watchdog reaps nothing of ours; wait for the process to go.)
  for (int i = 0; i < 100 && kill(server, 0) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // A process that now has the dead server's pid: its record points there.
  pid_t bystander = fork();
  if (bystander == 0) {
    execl("/bin/sleep", "sleep", "30", nullptr);
    _exit(127);
  }
  kill_.push_back(bystander);
  const std::string record = absl::StrCat(
      "/run/lazypull/", Sha256::Of(mp).Hex().substr(0, 16), ".pid");
  std::string text = ReadFile(record);
  ASSERT_FALSE(text.empty());
  text = absl::StrCat(bystander, text.substr(text.find('\n')));
  std::ofstream(record) << text;
  // The dead mount is cleaned up; the bystander lives on.
  RunResult u = Unmount(mp);
  EXPECT_EQ(u.exit_code, 0) << u.err;
  EXPECT_FALSE(IsMountPoint(mp));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  int status = 0;
  EXPECT_EQ(waitpid(bystander, &status, WNOHANG), 0) << "bystander killed";
  EXPECT_NE(access(record.c_str(), F_OK), 0) << "stale record left";
  // Again: nothing mounted, nothing signalled.
  RunResult again = Unmount(mp);
  EXPECT_NE(again.exit_code, 0);
  EXPECT_EQ(waitpid(bystander, &status, WNOHANG), 0) << "bystander killed";
}

TEST_F(UnmountTest, ASecondMountOnALiveOneIsRefused) {
  const std::string mp = base_ + "/mnt";
  const pid_t server = Mount(mp);
  ASSERT_GT(server, 0);
  RunResult second = ::lazypull::testing::Run(
      {LazypullBinary(), "mount", "--blob", blob_, "--insecure-skip-toc-verify",
       mp, "--cache-dir", base_ + "/cache2"});
  EXPECT_NE(second.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(second.err, "already a lazypull mount"))
      << second.err;
  RunResult u = Unmount(mp);
  EXPECT_EQ(u.exit_code, 0) << u.err;
  EXPECT_FALSE(IsMountPoint(mp));
  EXPECT_NE(kill(server, 0), 0) << "server still running";
  // A mountpoint that does not exist fails before anything is fetched.
  RunResult missing = ::lazypull::testing::Run(
      {LazypullBinary(), "mount", "--blob", blob_, "--insecure-skip-toc-verify",
       base_ + "/nowhere"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(missing.err, "nowhere")) << missing.err;
}

// A busy mount detached with --force keeps serving its open files; the
// mountpoint is free for a new mount at once, and a second unmount neither
// fails the detached mount's readers nor claims to unmount anything.
TEST_F(UnmountTest, ADetachedBusyMountFreesItsMountpoint) {
  const std::string mp = base_ + "/mnt";
  const pid_t first = Mount(mp);
  ASSERT_GT(first, 0);
  const int fd = open((mp + "/hello").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  RunResult busy = Unmount(mp);
  EXPECT_NE(busy.exit_code, 0);
  RunResult forced = Unmount(mp, /*force=*/true);
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_TRUE(absl::StrContains(forced.out, "detached")) << forced.out;
  RunResult again = Unmount(mp);
  EXPECT_NE(again.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(again.err, "not a mount point")) << again.err;
  const pid_t second = Mount(mp);
  EXPECT_GT(second, 0);
  EXPECT_NE(second, first);
  EXPECT_EQ(ReadFile(mp + "/hello"), "hello\n");
  char buf[16] = {0};
  EXPECT_EQ(pread(fd, buf, sizeof(buf), 0), 6) << strerror(errno);
  EXPECT_STREQ(buf, "hello\n");
  // The first server, signalled now (an operator, a supervisor, shutdown),
  // ends without unmounting the second one's mount (libfuse unmounts by
  // path: the new mount went, and its server with it).
  ASSERT_EQ(kill(first, SIGTERM), 0);
  for (int i = 0; i < 500 && kill(first, 0) == 0; ++i) usleep(10000);
  EXPECT_NE(kill(first, 0), 0) << "the first server outlived SIGTERM";
  EXPECT_TRUE(IsMountPoint(mp)) << "the first server took the second mount";
  EXPECT_EQ(ReadFile(mp + "/hello"), "hello\n");
  EXPECT_EQ(kill(second, 0), 0) << "the second server ended";
  close(fd);
  RunResult u = Unmount(mp);
  EXPECT_EQ(u.exit_code, 0) << u.err;
  EXPECT_FALSE(IsMountPoint(mp));
}

TEST_F(UnmountTest, AStoppedServerDoesNotHangTheUnmount) {
  const std::string mp = base_ + "/mnt";
  const pid_t server = Mount(mp);
  ASSERT_GT(server, 0);
  ASSERT_EQ(kill(server, SIGSTOP), 0);
  // (Stopped, it cannot exit: its pid is its own until this continues it,
  // and it then ends by itself, its mount gone.)
  struct ContinueAtExit {
    pid_t pid;
    ~ContinueAtExit() { kill(pid, SIGCONT); }
  } continue_at_exit{server};
  // Give the kernel's attribute cache time to expire: a stat would now
  // wait for the stopped server.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  // The mount goes at once; the command then waits a bounded time for the
  // (stopped) server to end, aborts its connection, and says it is still
  // shutting down.
  RunResult u;
  std::thread unmounter([&] {
    u = ::lazypull::testing::Run(
        {"/usr/bin/timeout", "60", LazypullBinary(), "unmount", mp});
  });
  for (int i = 0; i < 500 && IsMountPoint(mp); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // A mount made meanwhile likely gets the gone connection's number: the
  // abort must not reach it (it was aborted through a path opened late,
  // and another test's server running alongside lost its mount).
  const std::string other = base_ + "/other";
  const pid_t other_server = Mount(other);
  EXPECT_GT(other_server, 0);
  unmounter.join();
  EXPECT_EQ(u.exit_code, 0) << u.out << u.err;
  EXPECT_FALSE(IsMountPoint(mp)) << u.out << u.err;
  EXPECT_TRUE(absl::StrContains(u.out, "still shutting down")) << u.out;
  EXPECT_EQ(ReadFile(other + "/hello"), "hello\n");
  RunResult uo = Unmount(other);
  EXPECT_EQ(uo.exit_code, 0) << uo.err;
}

// A runtime that gives up on a mount (SIGTERM while it is being set up,
// here against a registry that never answers) gets the process back at
// once, with nothing mounted: the set-up's requests are cancelled rather
// than waited out (the signals were taken only once the mount was ready).
TEST_F(UnmountTest, ASignalDuringSetUpEndsItAtOnce) {
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
            0);
  ASSERT_EQ(listen(listener, 16), 0);  // connections wait, never answered
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string mp = base_ + "/mnt";
  mkdir(mp.c_str(), 0755);
  const std::string ref =
      absl::StrCat("127.0.0.1:", ntohs(addr.sin_port), "/silent/image:v1");
  const std::string bin = LazypullBinary();
  const std::string cache = base_ + "/cache";
  pid_t child = fork();
  if (child == 0) {
    execl(bin.c_str(), bin.c_str(), "mount", ref.c_str(), mp.c_str(),
          "--plain-http", "--foreground", "--cache-dir", cache.c_str(),
          nullptr);
    _exit(127);
  }
  ASSERT_GT(child, 0);
  kill_.push_back(child);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(child, SIGTERM), 0);
  int status = 0;
  pid_t done = 0;
  while ((done = waitpid(child, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(done, child) << "still setting up 20 s after SIGTERM";
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
          .count();
  EXPECT_LT(secs, 5);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << status;
  EXPECT_FALSE(IsMountPoint(mp));
  close(listener);
}

}  // namespace
}  // namespace lazypull::testing
