#include "core/tar_unpacker.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/testing/tar_builder.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using testing::TarBuilder;
using testing::TarSpec;

class TarUnpackerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = absl::StrCat(
        std::getenv("TEST_TMPDIR"), "/",
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    mkdir(base_.c_str(), 0755);
    dir_ = base_ + "/layer";
    mkdir(dir_.c_str(), 0755);
  }
  absl::StatusOr<UnpackedLayer> Unpack(const std::string& tar,
                                       bool skip_lazy_metadata = false) {
    MemoryByteStream in(tar);
    TarReader r(&in);
    TarUnpackOptions o;
    o.same_owner = false;
    o.skip_lazy_metadata = skip_lazy_metadata;
    return UnpackTar(&r, dir_, o);
  }
  std::string Read(const std::string& rel) {
    std::ifstream f(dir_ + "/" + rel);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  struct stat Lstat(const std::string& rel) {
    struct stat st {};
    EXPECT_EQ(lstat((dir_ + "/" + rel).c_str(), &st), 0) << rel;
    return st;
  }
  bool Exists(const std::string& path) {
    struct stat st;
    return lstat(path.c_str(), &st) == 0;
  }
  std::string base_, dir_;
};

TEST_F(TarUnpackerTest, CreatesEveryKindOfNode) {
  TarBuilder b;
  TarSpec root;
  root.name = "./";
  root.typeflag = '5';
  root.mode = 0751;
  b.Add(root);
  b.Dir("./etc", 0700);
  b.File("./etc/passwd", "root:x:0:0\n", 0644);
  TarSpec suid;
  suid.name = "usr/bin/su";  // parents implicit
  suid.content = "ELF";
  suid.mode = 04755;
  suid.mtime = 1000000000;
  b.Add(suid);
  b.Symlink("etc/link", "/etc/passwd");
  b.Hardlink("etc/hard", "etc/passwd");
  TarSpec fifo;
  fifo.name = "run/fifo";
  fifo.typeflag = '6';
  fifo.mode = 0640;
  b.Add(fifo);
  TarSpec x;
  x.name = "etc/attr";
  x.content = "a";
  x.xattrs = {{"user.test", "v"}};
  b.Add(x);
  auto r = Unpack(b.Finish());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Read("etc/passwd"), "root:x:0:0\n");
  EXPECT_EQ(Lstat("etc").st_mode & 07777, 0700u);
  EXPECT_EQ(Lstat("").st_mode & 07777, 0751u);
  struct stat su = Lstat("usr/bin/su");
  EXPECT_EQ(su.st_mode & 07777, 04755u);
  EXPECT_EQ(su.st_mtim.tv_sec, 1000000000);
  EXPECT_TRUE(S_ISDIR(Lstat("usr/bin").st_mode));
  char target[64] = {0};
  ASSERT_GT(readlink((dir_ + "/etc/link").c_str(), target, sizeof(target)), 0);
  EXPECT_STREQ(target, "/etc/passwd");
  EXPECT_EQ(Lstat("etc/hard").st_ino, Lstat("etc/passwd").st_ino);
  EXPECT_TRUE(S_ISFIFO(Lstat("run/fifo").st_mode));
  EXPECT_EQ(r->explicit_dirs.count(""), 1u);
  EXPECT_EQ(r->explicit_dirs.count("etc"), 1u);
  EXPECT_EQ(r->explicit_dirs.count("usr"), 0u);
  EXPECT_EQ(r->file_bytes, 15u);
}

TEST_F(TarUnpackerTest, ReportsWhiteoutsInsteadOfWritingThem) {
  TarBuilder b;
  b.File("a/.wh.gone", "");
  b.File("b/.wh..wh..opq", "");
  b.File("b/new", "n");
  b.File(".wh.top", "");
  b.File("c/.wh..wh.plnk", "");
  // Names nothing a whiteout could hide: ignored (a mount failed on them).
  b.File("d/.wh.", "").File("d/.wh..", "").File("d/.wh...", "");
  auto r = Unpack(b.Finish());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->whiteouts, (std::vector<std::string>{"a/gone", "top"}));
  EXPECT_EQ(r->opaque_dirs, (std::vector<std::string>{"b"}));
  EXPECT_FALSE(Exists(dir_ + "/a/.wh.gone"));
  EXPECT_FALSE(Exists(dir_ + "/b/.wh..wh..opq"));
  EXPECT_TRUE(S_ISDIR(Lstat("a").st_mode));
  EXPECT_EQ(Read("b/new"), "n");
}

// An eStargz layer's TOC entry and landmarks at its root are left out on
// request (a full pull then shows what a lazy mount shows); the same names
// elsewhere, or not regular files, are the image's own.
TEST_F(TarUnpackerTest, LazyMetadataIsLeftOutOnRequest) {
  TarBuilder b;
  b.File(".prefetch.landmark", "X");
  b.File("keep", "k");
  b.File("sub/stargz.index.json", "mine");
  b.Dir(".no.prefetch.landmark/");
  b.File("stargz.index.json", "{\"version\":1,\"entries\":[]}");
  const std::string tar = b.Finish();
  auto r = Unpack(tar, /*skip_lazy_metadata=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(Exists(dir_ + "/.prefetch.landmark"));
  EXPECT_FALSE(Exists(dir_ + "/stargz.index.json"));
  EXPECT_EQ(Read("keep"), "k");
  EXPECT_EQ(Read("sub/stargz.index.json"), "mine");
  EXPECT_TRUE(S_ISDIR(Lstat(".no.prefetch.landmark").st_mode));

  dir_ = base_ + "/plain";
  mkdir(dir_.c_str(), 0755);
  ASSERT_TRUE(Unpack(tar).ok());
  EXPECT_EQ(Read(".prefetch.landmark"), "X");
  EXPECT_TRUE(Exists(dir_ + "/stargz.index.json"));
}

TEST_F(TarUnpackerTest, LaterEntriesReplaceEarlierOnes) {
  TarBuilder b;
  b.File("x", "first");
  b.File("x", "second");
  b.File("d/inner", "i");
  b.File("d", "now a file");
  b.Dir("e");
  b.File("e/keep", "k");
  b.Dir("e", 0700);
  auto r = Unpack(b.Finish());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Read("x"), "second");
  EXPECT_EQ(Read("d"), "now a file");
  EXPECT_EQ(Read("e/keep"), "k");
  EXPECT_EQ(Lstat("e").st_mode & 07777, 0700u);
}

TEST_F(TarUnpackerTest, HardlinkToALowerLayerIsDeferred) {
  TarBuilder b;
  b.Hardlink("bin/sh", "bin/bash");
  auto r = Unpack(b.Finish());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->lower_hardlinks.size(), 1u);
  EXPECT_EQ(r->lower_hardlinks[0].first, "bin/sh");
  EXPECT_EQ(r->lower_hardlinks[0].second, "bin/bash");
}

// A later entry at (or under) a path linked to a lower layer's file wins,
// as in tar: the deferred link was made over it after merging (the later
// file's content was lost, a later directory removed).
TEST_F(TarUnpackerTest, ALaterEntryReplacesADeferredHardlink) {
  TarBuilder b;
  b.Hardlink("h", "x");
  b.File("h", "later entry wins");
  b.Hardlink("g", "x");
  b.Dir("g");
  b.File("g/y", "y");
  b.Hardlink("k", "x");  // (kept)
  auto r = Unpack(b.Finish());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->lower_hardlinks.size(), 1u);
  EXPECT_EQ(r->lower_hardlinks[0].first, "k");
  EXPECT_EQ(Read("h"), "later entry wins");
  EXPECT_EQ(Read("g/y"), "y");
}

TEST_F(TarUnpackerTest, RefusesToClimbOut) {
  {
    TarBuilder b;
    b.File("../escape", "x");
    auto r = Unpack(b.Finish());
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find(".."), std::string::npos) << r.status();
  }
  {
    TarBuilder b;
    b.Hardlink("h", "../../etc/passwd");
    EXPECT_FALSE(Unpack(b.Finish()).ok());
  }
  // A symlink planted by the layer, then a file "through" it.
  std::string outside = base_ + "/outside";
  mkdir(outside.c_str(), 0755);
  TarBuilder b;
  b.Symlink("sneaky", outside);
  b.File("sneaky/pwned", "x");
  auto r = Unpack(b.Finish());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("symlink"), std::string::npos)
      << r.status();
  EXPECT_FALSE(Exists(outside + "/pwned"));
}

// Names are cleaned as the lazy mount cleans them ("a/../b" is "b"), and
// what no path can hold is refused with a clear error, not ENAMETOOLONG.
TEST_F(TarUnpackerTest, NamesFollowTheMountsRules) {
  {
    TarBuilder b;
    b.File("x/../b", "b");
    b.Hardlink("./y/../h", "/q/../b");
    auto r = Unpack(b.Finish());
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(Exists(dir_ + "/b"));
    EXPECT_TRUE(Exists(dir_ + "/h"));
    EXPECT_FALSE(Exists(dir_ + "/x"));
  }
  std::string deep;
  while (deep.size() < 4096) deep += "d/";
  for (int i = 0; i < 3; ++i) {
    TarBuilder b;
    if (i == 0) b.File(deep + "f", "x");
    if (i == 1) b.Symlink("s", deep + "t");
    if (i == 2) b.File("f", "x").Hardlink("h", deep + "f");
    auto r = Unpack(b.Finish());
    ASSERT_FALSE(r.ok()) << i;
    EXPECT_NE(r.status().message().find("longer than 4095 (PATH_MAX)"),
              std::string::npos)
        << r.status();
    EXPECT_LT(r.status().message().size(), 1000u) << i;
  }
}

TEST_F(TarUnpackerTest, TruncatedStreamIsAnError) {
  TarBuilder b;
  b.File("big", std::string(10000, 'z'));
  std::string tar = b.Finish();
  auto r = Unpack(tar.substr(0, 3000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
}

}  // namespace
}  // namespace lazypull
