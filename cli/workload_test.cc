#include "cli/workload.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull::cli {
namespace {

using ::lazypull::testing::MakeTempDir;
using ::lazypull::testing::ReadFile;

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path) << data;
}

// A root made of the host's /usr (bind-mounted read-only) plus an /etc of
// the test's own and a writable /out for results.
class WorkloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root (mounts, chroot)";
    root_ = MakeTempDir("root");
    chmod(root_.c_str(), 0755);
    for (const char* d : {"/usr", "/etc", "/out", "/srv"}) {
      ASSERT_EQ(mkdir((root_ + d).c_str(), 0755), 0) << d;
    }
    chmod((root_ + "/out").c_str(), 0777);
    for (const char* l : {"bin", "lib", "lib64", "sbin"}) {
      ASSERT_EQ(symlink(absl::StrCat("usr/", l).c_str(),
                        absl::StrCat(root_, "/", l).c_str()),
                0);
    }
    ASSERT_EQ(
        mount("/usr", (root_ + "/usr").c_str(), nullptr, MS_BIND, nullptr), 0);
    mounted_ = true;
    mount(nullptr, (root_ + "/usr").c_str(), nullptr,
          MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr);
    WriteFile(root_ + "/etc/passwd",
              "root:x:0:0:root:/root:/bin/sh\n"
              "app:x:1234:2345:app:/srv:/bin/sh\n");
    WriteFile(root_ + "/etc/group",
              "root:x:0:\napp:x:2345:\nextra:x:3456:app,other\n"
              "web:x:4567:\n");
  }
  void TearDown() override {
    if (mounted_) umount2((root_ + "/usr").c_str(), MNT_DETACH);
  }

  WorkloadSpec Spec(const std::string& cmd) {
    WorkloadSpec s;
    s.rootfs = root_;
    s.command = cmd;
    s.period = absl::Seconds(20);
    return s;
  }

  std::string root_;
  bool mounted_ = false;
};

TEST_F(WorkloadTest, RunsWithTheImageSettingsInAContainerLikeRoot) {
  WorkloadSpec s = Spec(
      "echo \"$GREETING\" > /out/env; pwd > /out/pwd; id -u > /out/uid; "
      "id -G > /out/groups; echo x > /dev/null && echo null-ok > /out/dev; "
      "test -r /proc/self/status && echo proc-ok > /out/proc; "
      "echo t > /tmp/t && cat /tmp/t > /out/tmp; echo \"$PATH\" > /out/path");
  s.env = {"GREETING=hello world"};
  s.working_dir = "/srv";
  s.user = "app";
  bool started = false;
  s.on_start = [&] { started = true; };
  absl::StatusOr<WorkloadResult> r = RunWorkload(s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(started);
  EXPECT_FALSE(r->timed_out);
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(ReadFile(root_ + "/out/env"), "hello world\n");
  EXPECT_EQ(ReadFile(root_ + "/out/pwd"), "/srv\n");
  EXPECT_EQ(ReadFile(root_ + "/out/uid"), "1234\n");
  EXPECT_EQ(ReadFile(root_ + "/out/groups"), "2345 3456\n");
  EXPECT_EQ(ReadFile(root_ + "/out/dev"), "null-ok\n");
  EXPECT_EQ(ReadFile(root_ + "/out/proc"), "proc-ok\n");
  EXPECT_EQ(ReadFile(root_ + "/out/tmp"), "t\n");
  EXPECT_NE(ReadFile(root_ + "/out/path").find("/usr/bin"), std::string::npos);
  // /tmp was the workload's own tmpfs, gone with it.
  struct stat st;
  EXPECT_NE(stat((root_ + "/tmp/t").c_str(), &st), 0);
}

// The workload is contained as a container runtime contains one: its own
// pid namespace (its shell is pid 2, under an init that reaps), Docker's
// default capability set, and a pivot_root'd root that a root workload
// cannot leave (two chroot(2) calls leave a plain chroot).
TEST_F(WorkloadTest, TheWorkloadIsContained) {
  absl::StatusOr<WorkloadResult> r = RunWorkload(
      Spec("grep CapBnd /proc/self/status > /out/capbnd; echo $$ > /out/pid; "
           "ls /proc | grep -c '^[0-9]' > /out/procs"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 0);
  // Docker's default set (0xa80425fb), of what this process may have.
  uint64_t ours = 0, theirs = 0;
  const std::string mine = ReadFile("/proc/self/status");
  const size_t at = mine.find("CapBnd:\t");
  ASSERT_NE(at, std::string::npos);
  ours = std::strtoull(mine.c_str() + at + 8, nullptr, 16);
  const std::string got = ReadFile(root_ + "/out/capbnd");
  ASSERT_EQ(got.rfind("CapBnd:\t", 0), 0u) << got;
  theirs = std::strtoull(got.c_str() + 8, nullptr, 16);
  EXPECT_EQ(theirs, ours & 0xa80425fbu) << std::hex << theirs;
  EXPECT_EQ(ReadFile(root_ + "/out/pid"), "2\n");
  // The init, the shell, grep/ls: a handful, not the host's processes.
  EXPECT_LE(std::atoi(ReadFile(root_ + "/out/procs").c_str()), 4);

  if (access("/usr/bin/python3", X_OK) != 0) {
    GTEST_SKIP() << "SKIPPED the escape attempt: no /usr/bin/python3";
  }
  const std::string outside = MakeTempDir("outside");
  const std::string marker = outside + "/escaped";
  r =
      RunWorkload(Spec(absl::StrCat("python3 -c \"import os\n"
                                    "os.mkdir('/esc')\n"
                                    "os.chroot('/esc')\n"
                                    "for _ in range(64): os.chdir('..')\n"
                                    "os.chroot('.')\n"
                                    "open('",
                                    marker, "', 'w').write('out')\n\"")));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NE(r->exit_code, 0) << "the escape attempt did not fail";
  struct stat st;
  EXPECT_NE(stat(marker.c_str(), &st), 0) << "the workload left its root";
}

TEST_F(WorkloadTest, ExitStatusAndSignalAreReported) {
  absl::StatusOr<WorkloadResult> r = RunWorkload(Spec("exit 7"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->exit_code, 7);
  r = RunWorkload(Spec("kill -TERM $$"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->signal, SIGTERM);
}

TEST_F(WorkloadTest, ThePeriodEndsTheWorkloadAndItsChildren) {
  WorkloadSpec s = Spec("sleep 60 & sleep 60; echo late > /out/late");
  s.period = absl::Milliseconds(300);
  absl::StatusOr<WorkloadResult> r = RunWorkload(s);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->timed_out);
  EXPECT_LT(r->elapsed, absl::Seconds(10));
  struct stat st;
  EXPECT_NE(stat((root_ + "/out/late").c_str(), &st), 0);
}

TEST_F(WorkloadTest, SetupFailuresSayWhichStep) {
  WorkloadSpec s = Spec("true");
  s.working_dir = "/no/such/dir";
  absl::StatusOr<WorkloadResult> r = RunWorkload(s);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/no/such/dir"), std::string::npos)
      << r.status();
  s = Spec("true");
  s.user = "nobody-here";
  r = RunWorkload(s);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("nobody-here"), std::string::npos);
  ASSERT_EQ(unlink((root_ + "/bin").c_str()), 0);  // no /bin/sh any more
  r = RunWorkload(Spec("true"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/bin/sh"), std::string::npos)
      << r.status();
}

// The image's /etc/passwd is read beneath its root: not through a symlink
// (an image's "etc -> /host/dir" read the host's file), not a fifo (it
// hung), only a regular file.
TEST_F(WorkloadTest, ResolveUserReadsOnlyTheImagesOwnFiles) {
  const std::string host = MakeTempDir("hostetc");
  WriteFile(host + "/passwd", "victim:x:4242:4242::/:/bin/sh\n");
  const std::string linked = MakeTempDir("linked-root");
  ASSERT_EQ(symlink(host.c_str(), (linked + "/etc").c_str()), 0);
  absl::StatusOr<ResolvedUser> u = ResolveUser(linked, "victim");
  EXPECT_FALSE(u.ok()) << "read the host's passwd: uid " << u->uid;
  const std::string fifo_root = MakeTempDir("fifo-root");
  ASSERT_EQ(mkdir((fifo_root + "/etc").c_str(), 0755), 0);
  ASSERT_EQ(mkfifo((fifo_root + "/etc/passwd").c_str(), 0644), 0);
  u = ResolveUser(fifo_root, "victim");  // returns (it hung in open)
  EXPECT_EQ(u.status().code(), absl::StatusCode::kNotFound) << u.status();
  u = ResolveUser(fifo_root, "7");  // a numeric user needs no passwd
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->uid, 7u);
}

TEST_F(WorkloadTest, ResolveUserForms) {
  auto u = ResolveUser(root_, "1234");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->uid, 1234u);
  EXPECT_EQ(u->gid, 2345u);
  u = ResolveUser(root_, "app:web");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->gid, 4567u);
  u = ResolveUser(root_, "4242:99");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->uid, 4242u);
  EXPECT_EQ(u->gid, 99u);
  u = ResolveUser(root_, "");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->uid, 0u);
  EXPECT_FALSE(ResolveUser(root_, "app:nogroup-here").ok());
}

}  // namespace
}  // namespace lazypull::cli
