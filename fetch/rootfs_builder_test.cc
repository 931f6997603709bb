#include "fetch/rootfs_builder.h"

#include <dirent.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/tar_reader.h"
#include "core/testing/tar_builder.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using testing::TarBuilder;
using testing::TarSpec;

class RootfsBuilderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = absl::StrCat(
        std::getenv("TEST_TMPDIR"), "/",
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    mkdir(base_.c_str(), 0755);
    root_ = base_ + "/rootfs";
    mkdir(root_.c_str(), 0755);
  }
  absl::Status Apply(const std::string& tar) {
    std::string staged = absl::StrCat(base_, "/layer", n_++);
    mkdir(staged.c_str(), 0755);
    MemoryByteStream in(tar);
    TarReader r(&in);
    TarUnpackOptions uo;
    uo.same_owner = false;
    absl::StatusOr<UnpackedLayer> l = UnpackTar(&r, staged, uo);
    if (!l.ok()) return l.status();
    ApplyLayerOptions ao;
    ao.same_owner = false;
    return ApplyLayer(staged, *l, root_, ao);
  }
  std::set<std::string> Tree() {
    std::set<std::string> out;
    std::vector<std::string> stack = {""};
    while (!stack.empty()) {
      std::string rel = stack.back();
      stack.pop_back();
      DIR* d = opendir((root_ + "/" + rel).c_str());
      while (struct dirent* e = d ? readdir(d) : nullptr) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        std::string p = rel.empty() ? n : rel + "/" + n;
        struct stat st;
        lstat((root_ + "/" + p).c_str(), &st);
        if (S_ISDIR(st.st_mode)) {
          out.insert(p + "/");
          stack.push_back(p);
        } else if (S_ISLNK(st.st_mode)) {
          out.insert(p + "@");
        } else {
          std::ifstream f(root_ + "/" + p);
          std::stringstream ss;
          ss << f.rdbuf();
          out.insert(p + "=" + ss.str());
        }
      }
      if (d) closedir(d);
    }
    return out;
  }
  std::string base_, root_;
  int n_ = 0;
};

TEST_F(RootfsBuilderTest, WhiteoutsOpaqueAndReplacement) {
  TarBuilder l1;
  l1.File("a/1", "1").File("a/2", "2").File("b/x", "x").File("b/sub/y", "y");
  l1.Dir("gone").File("gone/deep/z", "z").Symlink("link", "a").File("f", "f");
  ASSERT_TRUE(Apply(l1.Finish()).ok());
  TarBuilder l2;
  // The opaque marker comes after this layer's own entry: order must not
  // matter (only lower layers are hidden).
  l2.File("b/new", "n").File("b/.wh..wh..opq", "");
  l2.File("a/.wh.1", "").File(".wh.gone", "");
  l2.File("link/inside", "i");  // a directory replaces the lower symlink
  l2.Symlink("f", "a/2");       // a symlink replaces a file
  l2.File("a/.wh.never-existed", "");
  absl::Status st = Apply(l2.Finish());
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(Tree(), (std::set<std::string>{"a/", "a/2=2", "b/", "b/new=n",
                                           "link/", "link/inside=i", "f@"}));
  // A directory can come back after its whiteout.
  TarBuilder l3;
  l3.File("gone/again", "g").File("b/.wh.new", "");
  ASSERT_TRUE(Apply(l3.Finish()).ok());
  EXPECT_EQ(Tree(),
            (std::set<std::string>{"a/", "a/2=2", "b/", "gone/", "gone/again=g",
                                   "link/", "link/inside=i", "f@"}));
}

TEST_F(RootfsBuilderTest, UpperDirectoryAttributesWinOnlyWhenExplicit) {
  TarBuilder l1;
  l1.Dir("d", 0700).File("d/x", "x").Dir("e", 0700).File("e/y", "y");
  ASSERT_TRUE(Apply(l1.Finish()).ok());
  TarBuilder l2;
  l2.Dir("d", 0755).File("d/x2", "x2");  // explicit: mode replaced
  l2.File("e/y2", "y2");                 // implicit parent: mode kept
  ASSERT_TRUE(Apply(l2.Finish()).ok());
  struct stat st;
  ASSERT_EQ(stat((root_ + "/d").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(stat((root_ + "/e").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST_F(RootfsBuilderTest, HardlinksToLowerLayers) {
  TarBuilder l1;
  l1.File("bin/busybox", "bb");
  ASSERT_TRUE(Apply(l1.Finish()).ok());
  TarBuilder l2;
  l2.Hardlink("bin/ls", "bin/busybox");
  ASSERT_TRUE(Apply(l2.Finish()).ok());
  struct stat a, b;
  ASSERT_EQ(lstat((root_ + "/bin/ls").c_str(), &a), 0);
  ASSERT_EQ(lstat((root_ + "/bin/busybox").c_str(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  TarBuilder l3;
  l3.Hardlink("bin/cat", "bin/nowhere");
  absl::Status st = Apply(l3.Finish());
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(absl::StrContains(st.message(), "bin/nowhere")) << st;
}

// As a user without CAP_DAC_OVERRIDE (a rootless pull): a layer's directory
// without owner write (Debian's 0555 /proc) is moved into place (moving a
// directory writes its ".."), and one replaced by a later layer is removed
// with what it holds; both failed with EACCES.
TEST(RootfsBuilderUnprivilegedTest, ReadOnlyDirectoriesAsAnUnprivilegedUser) {
  if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root to become nobody";
  constexpr uid_t kNobody = 65534;
  char tmpl[] = "/tmp/lazypull-rootfs-ro.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string base = tmpl;
  ASSERT_EQ(chown(base.c_str(), kNobody, kNobody), 0);
  TarBuilder l1, l2;
  TarSpec ro;
  ro.typeflag = '5';
  ro.mode = 0555;
  ro.name = "proc/";
  l1.Add(ro);
  ro.name = "dir/";
  l1.Add(ro);
  l1.File("dir/f", "f");  // (written before dir/ gets its 0555)
  l2.File("dir", "now a file");
  const std::string t1 = l1.Finish(), t2 = l2.Finish();
  const pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setresgid(kNobody, kNobody, kNobody) ||
        setresuid(kNobody, kNobody, kNobody)) {
      _exit(10);
    }
    const std::string root = base + "/rootfs";
    if (mkdir(root.c_str(), 0755) != 0) _exit(11);
    int n = 0;
    for (const std::string* tar : {&t1, &t2}) {
      const std::string staged = absl::StrCat(base, "/layer", n++);
      if (mkdir(staged.c_str(), 0755) != 0) _exit(12);
      MemoryByteStream in(*tar);
      TarReader r(&in);
      TarUnpackOptions uo;
      uo.same_owner = false;
      absl::StatusOr<UnpackedLayer> l = UnpackTar(&r, staged, uo);
      if (!l.ok()) _exit(20 + n);
      ApplyLayerOptions ao;
      ao.same_owner = false;
      if (!ApplyLayer(staged, *l, root, ao).ok()) _exit(30 + n);
    }
    struct stat st;
    if (stat((root + "/proc").c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
        (st.st_mode & 07777) != 0555) {
      _exit(40);
    }
    if (lstat((root + "/dir").c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      _exit(41);
    }
    _exit(0);
  }
  int status = -1;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  (void)!std::system(
      absl::StrCat("chmod -R u+rwx ", base, "; rm -rf ", base).c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "21-22: unpack, 31-32: apply (layer 1-2), 40: proc's mode, "
         "41: dir not replaced";
}

}  // namespace
}  // namespace lazypull
