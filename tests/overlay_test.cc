// lazypull mounts stacked by a read-only overlayfs, the way a container
// runtime uses them:
//
//   lowerdir = WHITEOUTS_MNT : PLAIN : BASIC_MNT
//
// - WHITEOUTS_MNT: the golden `whiteouts` layer mounted by lazypull
//   (`.wh.removed`, opaque `dir/` with `dir/.wh.gone` and `dir/new.txt`,
//   `keep.txt`);
// - PLAIN: a directory written by the test (lazypull has no converter yet to
//   make a layer of it): `removed`, `dir/gone`, `dir/other`, `keep.txt`,
//   `lower-only.txt`, an `etc/hosts` shadowing the bottom layer's, a
//   whiteout of `bin/tool` and an opaque `home/`;
// - BASIC_MNT: the golden `basic` layer mounted by lazypull.
//
// The merged tree must obey overlayfs semantics through both mounts: the
// top layer's whiteouts hide lower entries, its opaque directory hides the
// lower directory's contents, its files shadow lower ones; and the bottom
// layer shows through wherever nothing above covers it.
//
// Needs root, /dev/fuse and overlayfs (tag `no-sandbox`); skips loudly
// otherwise.
#include <errno.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

bool KernelHasOverlay() {
  std::ifstream in("/proc/filesystems");
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("\toverlay") != std::string::npos) return true;
  }
  return false;
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  ASSERT_TRUE(out.good()) << path;
}

// Whether `path` does not exist (lstat gives ENOENT).
::testing::AssertionResult Absent(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    return ::testing::AssertionFailure()
           << path << " exists (mode 0" << std::oct << st.st_mode << ")";
  }
  if (errno != ENOENT) {
    return ::testing::AssertionFailure()
           << path << ": " << strerror(errno) << ", want ENOENT";
  }
  return ::testing::AssertionSuccess();
}

std::string Content(const std::string& path) {
  FileContent c = ReadWholeFile(path);
  EXPECT_EQ(c.error, 0) << path << ": " << strerror(c.error);
  return c.data;
}

class OverlayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_TESTDATA();
    LAZYPULL_SKIP_WITHOUT_FUSE();
    if (!KernelHasOverlay()) {
      GTEST_SKIP() << "SKIPPED: the kernel has no overlay file system";
    }
  }

  void TearDown() override {
    EXPECT_EQ(janitor_.DetachAll(), 0) << "the test left a mount behind";
  }

  void MountCase(const std::string& name, ExpectedLayer* layer, LayerMount* m) {
    std::optional<ExpectedLayer> l = LoadExpectedLayer(name);
    ASSERT_TRUE(l.has_value());
    *layer = std::move(*l);
    *m = MountExpected(&janitor_, *layer);
    ASSERT_TRUE(m->ok()) << name << ": " << m->result.err << "\nlog:\n"
                         << m->Log();
  }

  // The middle layer, an ordinary directory.
  void MakePlainLayer(const std::string& root) {
    ASSERT_EQ(mkdir((root + "/dir").c_str(), 0755), 0);
    ASSERT_EQ(mkdir((root + "/etc").c_str(), 0755), 0);
    ASSERT_EQ(mkdir((root + "/bin").c_str(), 0755), 0);
    ASSERT_EQ(mkdir((root + "/home").c_str(), 0755), 0);
    WriteFile(root + "/removed", "removed by the top layer\n");
    WriteFile(root + "/dir/gone", "whited out by the top layer\n");
    WriteFile(root + "/dir/other", "hidden: the top layer's dir is opaque\n");
    WriteFile(root + "/keep.txt", "shadowed by the top layer\n");
    WriteFile(root + "/lower-only.txt", "from the plain layer\n");
    WriteFile(root + "/etc/hosts", "plain layer hosts\n");
    WriteFile(root + "/home/new.txt", "plain layer home\n");
    // Whiteout of the bottom layer's bin/tool; home/ hides the bottom's.
    ASSERT_EQ(mknod((root + "/bin/tool").c_str(), S_IFCHR, makedev(0, 0)), 0)
        << strerror(errno);
    ASSERT_EQ(
        setxattr((root + "/home").c_str(), kTrustedOpaqueXattr, "y", 1, 0), 0)
        << strerror(errno);
  }

  MountJanitor janitor_;
};

TEST_F(OverlayTest, StackedLayersObeyOverlaySemantics) {
  ExpectedLayer top, bottom;
  LayerMount top_mnt, bottom_mnt;
  ASSERT_NO_FATAL_FAILURE(MountCase("whiteouts", &top, &top_mnt));
  ASSERT_NO_FATAL_FAILURE(MountCase("basic", &bottom, &bottom_mnt));
  const std::string plain = MakeTempDir("plain");
  ASSERT_NO_FATAL_FAILURE(MakePlainLayer(plain));

  // The top layer presents whiteouts and the opaque directory.
  struct stat st;
  ASSERT_EQ(lstat((top_mnt.mountpoint + "/removed").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0));

  const std::string merged = MakeTempDir("merged");
  janitor_.Track(merged);
  const std::string opts = "lowerdir=" + top_mnt.mountpoint + ":" + plain +
                           ":" + bottom_mnt.mountpoint;
  ASSERT_EQ(
      mount("overlay", merged.c_str(), "overlay", MS_RDONLY, opts.c_str()), 0)
      << "mount -t overlay -o " << opts << ": " << strerror(errno);
  EXPECT_EQ(MountType(merged), "overlay");
  auto m = [&](const std::string& p) { return merged + "/" + p; };

  // Top layer over the plain one.
  EXPECT_TRUE(Absent(m("removed"))) << "the whiteout did not hide it";
  EXPECT_TRUE(Absent(m("dir/gone"))) << "the whiteout did not hide it";
  EXPECT_TRUE(Absent(m("dir/other"))) << "the opaque dir did not hide it";
  EXPECT_EQ(Sha256Of(Content(m("dir/new.txt"))),
            top.overlay.at("dir/new.txt").sha256.value_or(""));
  EXPECT_EQ(Sha256Of(Content(m("keep.txt"))),
            top.overlay.at("keep.txt").sha256.value_or(""))
      << "the top layer's keep.txt does not shadow the lower one";
  EXPECT_EQ(Content(m("lower-only.txt")), "from the plain layer\n");
  // In a directory only the top layer contributes to (opaque), overlayfs
  // lists the directory as the layer does, whiteouts included; only
  // new.txt may resolve, and nothing of the lower dir/ may show.
  std::set<std::string> dir_names = ListDir(m("dir"));
  EXPECT_EQ(dir_names.count("other"), 0u);
  std::set<std::string> resolvable;
  for (const std::string& n : dir_names) {
    if (lstat(m("dir/" + n).c_str(), &st) == 0) resolvable.insert(n);
  }
  EXPECT_EQ(resolvable, std::set<std::string>{"new.txt"});

  // Plain layer over the bottom one.
  EXPECT_EQ(Content(m("etc/hosts")), "plain layer hosts\n")
      << "the plain layer's etc/hosts does not shadow the bottom one";
  EXPECT_TRUE(Absent(m("bin/tool")));
  EXPECT_TRUE(Absent(m("home/alice")));
  EXPECT_EQ(ListDir(m("home")), std::set<std::string>{"new.txt"});
  EXPECT_EQ(ListDir(m("bin")),
            (std::set<std::string>{"dangling", "hosts.abs", "sgid", "suid"}));
  EXPECT_EQ(
      ListDir(m("etc")),
      (std::set<std::string>{"empty", "hosts", "hosts.hard", "hosts.rel"}));

  // The root merges all three layers, whiteouts filtered.
  std::set<std::string> want_root = {"dir", "keep.txt", "lower-only.txt",
                                     "etc", "bin",      "home"};
  for (const auto& [path, e] : bottom.overlay) {
    if (!path.empty() && path.find('/') == std::string::npos) {
      want_root.insert(path);
    }
  }
  EXPECT_EQ(ListDir(merged), want_root);

  // The bottom layer shows through wherever nothing covers it.
  int checked = 0;
  for (const auto& [path, e] : bottom.overlay) {
    if (path.empty() || path == "etc/hosts" || path == "bin/tool" ||
        path.rfind("home/", 0) == 0 || path == "home" || path == "etc" ||
        path == "bin") {
      continue;
    }
    SCOPED_TRACE("bottom layer path " + path);
    ASSERT_EQ(lstat(m(path).c_str(), &st), 0) << strerror(errno);
    const std::string type =
        e.type == "hardlink" ? bottom.raw.at(e.link.value_or("")).type : e.type;
    if (type == "reg") {
      EXPECT_TRUE(S_ISREG(st.st_mode));
      EXPECT_EQ(Sha256Of(Content(m(path))), e.sha256.value_or(""));
    } else if (type == "dir") {
      EXPECT_TRUE(S_ISDIR(st.st_mode));
    } else if (type == "symlink") {
      EXPECT_TRUE(S_ISLNK(st.st_mode));
    } else if (type == "char" || type == "block") {
      EXPECT_EQ(st.st_rdev, makedev(e.dev_major, e.dev_minor));
    } else if (type == "fifo") {
      EXPECT_TRUE(S_ISFIFO(st.st_mode));
    }
    if (type != "symlink") {
      EXPECT_EQ(st.st_mode & 07777, e.mode);
    }
    ++checked;
  }
  EXPECT_GT(checked, 20);

  // Read-only all the way.
  errno = 0;
  EXPECT_EQ(open(m("new").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644), -1);
  EXPECT_EQ(errno, EROFS);

  EXPECT_EQ(umount2(merged.c_str(), 0), 0) << strerror(errno);
  for (const LayerMount* lm : {&top_mnt, &bottom_mnt}) {
    RunResult r = UnmountLayer(lm->mountpoint);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(MountCount(lm->mountpoint), 0);
  }
}

}  // namespace
}  // namespace lazypull::testing
