#include "cli/workload.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

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
