// lazypull mounts stacked by a read-only overlayfs, the way a container
// runtime uses them.
//
// ConvertedLayers: two layers made by `lazypull convert` from tars the test
// writes (the upper one eStargz, the lower one zstd:chunked), mounted and
// stacked as lowerdir=UPPER_MNT:LOWER_MNT. The upper layer holds whiteouts
// (`.wh.removed` of a lower file, `.wh.gonedir` of a lower directory tree,
// `merged/.wh.gone` inside a directory both layers have), an opaque `opq/`
// (`.wh..wh..opq`), files shadowing lower ones and a symlink shadowing a
// lower directory. The merged tree must be exactly what overlayfs semantics
// say: whiteouts hide lower entries, the opaque directory hides the lower
// directory's contents, upper entries shadow lower ones, the rest of the
// lower layer shows through.
//
// GoldenLayers: lowerdir = WHITEOUTS_MNT : PLAIN : BASIC_MNT, with the golden
// `whiteouts` and `basic` layers mounted by lazypull and PLAIN a directory
// written by the test (`removed`, `dir/gone`, `dir/other`, `keep.txt`, an
// `etc/hosts` shadowing basic's, a whiteout of `bin/tool`, an opaque
// `home/`), so that lazypull mounts sit both above and below other layers.
//
// Needs root, /dev/fuse and overlayfs (tag `no-sandbox`); skips loudly
// otherwise.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/testing/tar_builder.h"
#include "fuse/layer_mount.h"
#include "gtest/gtest.h"
#include "simdjson.h"
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

// Converts `tar` (bytes) with `lazypull convert` and mounts the result.
void ConvertAndMount(MountJanitor* janitor, const std::string& tar,
                     const std::string& format, LayerMount* m) {
  const ConvertedLayer l = ConvertTar(tar, format);
  ASSERT_FALSE(l.blob.empty());
  *m = MountLayer(janitor, l.blob, {"--toc-digest", l.toc_digest});
  ASSERT_TRUE(m->ok()) << m->result.err << "\nlog:\n" << m->Log();
}

// The names readdir(3) gives for `dir`, in its order, without . and ..
std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  EXPECT_NE(d, nullptr) << dir << ": " << strerror(errno);
  if (d == nullptr) return names;
  while (struct dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  closedir(d);
  return names;
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

// A pseudo-random payload spanning several 64 KiB chunks.
std::string Payload(size_t n, uint64_t seed) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    out[i] = static_cast<char>(seed >> 56);
  }
  return out;
}

// A directory lists its entries in the order the layer stores them (so that
// a program walking the tree reads the blob front to back, as prefetch and
// background fetch bring it), whiteouts in their place, and every one of
// them is still found by name. Needs no shared testdata.
TEST(LayerListingTest, ReaddirFollowsTheLayersOrder) {
  LAZYPULL_SKIP_WITHOUT_FUSE();
  MountJanitor janitor;
  TarBuilder tar;
  tar.File("zeta", "z\n")
      .Dir("dir/")
      .File("dir/mike", "m\n")
      .File("dir/.wh.gone", "")
      .File("dir/alpha", Payload(150000, 3))
      .Symlink("dir/kilo", "mike")
      .File("alpha", "a\n")
      .Dir("bravo/")
      .File("bravo/x", "x\n")
      .Dir("bravo/charlie/");
  // readdir(3)'s ".." names the parent (programs match it against stat).
  auto dotdot_ino = [](const std::string& dir) -> ino_t {
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) return 0;
    ino_t ino = 0;
    while (struct dirent* e = readdir(d)) {
      if (std::string(e->d_name) == "..") ino = e->d_ino;
    }
    closedir(d);
    return ino;
  };
  for (const char* format : {"estargz", "zstd:chunked"}) {
    SCOPED_TRACE(format);
    LayerMount m;
    ASSERT_NO_FATAL_FAILURE(
        ConvertAndMount(&janitor, tar.Finish(), format, &m));
    EXPECT_EQ(Listing(m.mountpoint),
              (std::vector<std::string>{"zeta", "dir", "alpha", "bravo"}));
    EXPECT_EQ(Listing(m.mountpoint + "/dir"),
              (std::vector<std::string>{"mike", "gone", "alpha", "kilo"}));
    EXPECT_EQ(Content(m.mountpoint + "/zeta"), "z\n");
    EXPECT_EQ(Content(m.mountpoint + "/dir/alpha"), Payload(150000, 3));
    struct stat st;
    ASSERT_EQ(lstat((m.mountpoint + "/dir/gone").c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
    ASSERT_EQ(lstat((m.mountpoint + "/dir/kilo").c_str(), &st), 0);
    EXPECT_TRUE(S_ISLNK(st.st_mode));
    EXPECT_TRUE(Absent(m.mountpoint + "/dir/nope"));
    ASSERT_EQ(stat((m.mountpoint + "/bravo").c_str(), &st), 0);
    EXPECT_EQ(dotdot_ino(m.mountpoint + "/bravo/charlie"), st.st_ino);
    ASSERT_EQ(stat(m.mountpoint.c_str(), &st), 0);
    EXPECT_EQ(dotdot_ino(m.mountpoint + "/bravo"), st.st_ino);
    EXPECT_EQ(
        ::lazypull::testing::Run({LazypullBinary(), "unmount", m.mountpoint})
            .exit_code,
        0);
  }
  EXPECT_EQ(janitor.DetachAll(), 0) << "the test left a mount behind";
}

// Whiteouts a hostile layer may hold: one that is a hardlink to a real file
// (whiteouts are marked by inode: the file turned into a 0:0 device), and
// ones that name nothing (".wh..": a second ".." in the listing). The real
// file stays itself; the odd names are not shown. Needs no shared testdata.
TEST(LayerListingTest, HostileWhiteoutsHideNothingReal) {
  LAZYPULL_SKIP_WITHOUT_FUSE();
  MountJanitor janitor;
  TarBuilder tar;
  tar.File("real", "r\n")
      .Hardlink(".wh.gone", "real")
      .File(".wh..", "x")
      .Dir("dir/")
      .File("dir/.wh.", "y")
      .File("dir/.wh.lower", "");
  for (const char* format : {"estargz", "zstd:chunked"}) {
    SCOPED_TRACE(format);
    LayerMount m;
    ASSERT_NO_FATAL_FAILURE(
        ConvertAndMount(&janitor, tar.Finish(), format, &m));
    struct stat st;
    ASSERT_EQ(lstat((m.mountpoint + "/real").c_str(), &st), 0);
    EXPECT_TRUE(S_ISREG(st.st_mode)) << std::oct << st.st_mode;
    EXPECT_EQ(Content(m.mountpoint + "/real"), "r\n");
    EXPECT_EQ(Listing(m.mountpoint), (std::vector<std::string>{"real", "dir"}));
    int dots = 0;
    DIR* d = opendir(m.mountpoint.c_str());
    ASSERT_NE(d, nullptr);
    while (struct dirent* e = readdir(d))
      dots += std::string(e->d_name) == "..";
    closedir(d);
    EXPECT_EQ(dots, 1);
    // An ordinary whiteout beside them still is one.
    EXPECT_EQ(Listing(m.mountpoint + "/dir"),
              (std::vector<std::string>{"lower"}));
    ASSERT_EQ(lstat((m.mountpoint + "/dir/lower").c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
    EXPECT_EQ(
        ::lazypull::testing::Run({LazypullBinary(), "unmount", m.mountpoint})
            .exit_code,
        0);
  }
  EXPECT_EQ(janitor.DetachAll(), 0) << "the test left a mount behind";
}

// As a real filesystem: a POSIX ACL that lets a named user read a file the
// mode bits alone would not is honoured (the kernel asks for the ACL); a
// symlink's permission bits read 0777 whatever its tar header says; blocks
// are counted as ext4 counts them (du agrees with a full pull); the
// layer's own /.stargz-snapshotter (shadowed by the mount's state
// directory for lookups) is not listed either.
TEST(LayerListingTest, AclsSymlinkModesAndTheStateDirectory) {
  LAZYPULL_SKIP_WITHOUT_FUSE();
  MountJanitor janitor;
  constexpr uint32_t kNobody = 65534;
  // system.posix_acl_access: version 2, then {tag, perm, id} (little-endian)
  // for user::rw-, user:65534:r--, group::r--, mask::r--, other::---.
  std::string acl("\x02\0\0\0", 4);
  auto entry = [&](uint16_t tag, uint16_t perm, uint32_t id) {
    for (int i = 0; i < 2; ++i)
      acl.push_back(static_cast<char>(tag >> (8 * i)));
    for (int i = 0; i < 2; ++i)
      acl.push_back(static_cast<char>(perm >> (8 * i)));
    for (int i = 0; i < 4; ++i) acl.push_back(static_cast<char>(id >> (8 * i)));
  };
  entry(0x01, 6, 0xffffffff);
  entry(0x02, 4, kNobody);
  entry(0x04, 4, 0xffffffff);
  entry(0x10, 4, 0xffffffff);
  entry(0x20, 0, 0xffffffff);
  TarBuilder tar;
  TarSpec f;
  f.name = "acl";
  f.content = "for nobody\n";
  f.mode = 0640;
  f.uid = f.gid = 0;
  f.xattrs = {{"system.posix_acl_access", acl}};
  tar.Add(f);
  TarSpec closed = f;
  closed.name = "closed";
  closed.xattrs.clear();
  tar.Add(closed);
  TarSpec link;
  link.name = "link";
  link.typeflag = '2';
  link.link = "acl";
  link.mode = 0644;
  tar.Add(link);
  tar.Dir(".stargz-snapshotter/").File(".stargz-snapshotter/own.txt", "x");
  const ConvertedLayer l = ConvertTar(tar.Finish(), "estargz");
  ASSERT_FALSE(l.blob.empty());
  LayerMount m = MountLayer(
      &janitor, l.blob, {"--toc-digest", l.toc_digest, "-o", "allow_other"});
  ASSERT_TRUE(m.ok()) << m.result.err << "\nlog:\n" << m.Log();
  struct stat st;
  ASSERT_EQ(lstat((m.mountpoint + "/link").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0777u) << std::oct << st.st_mode;
  EXPECT_EQ(st.st_blocks, 0) << "a short symlink lives in its inode";
  ASSERT_EQ(lstat((m.mountpoint + "/acl").c_str(), &st), 0);
  EXPECT_EQ(st.st_blocks, 8) << "11 bytes take a 4 KiB block, as on ext4";
  EXPECT_EQ(Listing(m.mountpoint),
            (std::vector<std::string>{"acl", "closed", "link"}));
  // nobody, through a descriptor of the mount's root (the test's directories
  // above it are root's alone): the ACL lets it read "acl", not "closed".
  const int root = open(m.mountpoint.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(root, 0);
  auto read_as_nobody = [&](const char* name) {
    const pid_t pid = fork();
    if (pid == 0) {
      if (setgroups(0, nullptr) != 0 || setresgid(kNobody, kNobody, kNobody) ||
          setresuid(kNobody, kNobody, kNobody)) {
        _exit(3);
      }
      const int fd = openat(root, name, O_RDONLY);
      if (fd < 0) _exit(errno == EACCES ? 1 : 2);
      char buf[32];
      _exit(read(fd, buf, sizeof(buf)) == 11 ? 0 : 4);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  EXPECT_EQ(read_as_nobody("acl"), 0) << "the ACL's named user was refused";
  EXPECT_EQ(read_as_nobody("closed"), 1) << "mode 0640 let another user in";
  close(root);
  // A root mount keeps setuid and devices (a container's root filesystem).
  std::ifstream mi("/proc/self/mountinfo");
  bool found = false;
  for (std::string line; std::getline(mi, line);) {
    if (line.find(" " + m.mountpoint + " ") == std::string::npos) continue;
    found = true;
    const std::string opts = line.substr(0, line.find(" - "));
    EXPECT_EQ(opts.find("nosuid"), std::string::npos) << line;
    EXPECT_EQ(opts.find("nodev"), std::string::npos) << line;
  }
  EXPECT_TRUE(found) << m.mountpoint << " not in /proc/self/mountinfo";
  EXPECT_EQ(
      ::lazypull::testing::Run({LazypullBinary(), "unmount", m.mountpoint})
          .exit_code,
      0);
  EXPECT_EQ(janitor.DetachAll(), 0) << "the test left a mount behind";
}

// OCI: a whiteout applies to the lower layers only. ".wh.rec" beside the
// layer's own "rec/" removes the lower rec and keeps this one: rec is
// opaque (the lower rec/old used to show through). A layer whose root is
// opaque ("./.wh..wh..opq") hides every layer below it: overlayfs ignores
// the mark on a lower root, so MountLayerStack leaves those layers out
// (while two layers remain: one alone would be bind-mounted).
TEST(LayerStackTest, WhiteoutBesideItsOwnNameAndAnOpaqueRoot) {
  LAZYPULL_SKIP_WITHOUT_FUSE();
  MountJanitor janitor;
  TarBuilder lower, upper, top;
  lower.Dir("rec/").File("rec/old", "old\n").File("keep", "k\n");
  upper.File(".wh.rec", "").Dir("rec/").File("rec/new", "new\n");
  top.Dir("./").File(".wh..wh..opq", "").File("newroot", "n\n");
  LayerMount l, u, t;
  ASSERT_NO_FATAL_FAILURE(
      ConvertAndMount(&janitor, lower.Finish(), "estargz", &l));
  ASSERT_NO_FATAL_FAILURE(
      ConvertAndMount(&janitor, upper.Finish(), "zstd:chunked", &u));
  ASSERT_NO_FATAL_FAILURE(
      ConvertAndMount(&janitor, top.Finish(), "estargz", &t));
  const std::string merged = MakeTempDir("stack");
  janitor.Track(merged);
  ASSERT_TRUE(MountLayerStack({l.mountpoint, u.mountpoint}, merged).ok());
  EXPECT_EQ(ListDir(merged + "/rec"), std::set<std::string>{"new"});
  EXPECT_EQ(ListDir(merged), (std::set<std::string>{"keep", "rec"}));
  ASSERT_EQ(umount2(merged.c_str(), 0), 0) << strerror(errno);
  // The opaque root in the middle: the bottom layer is left out.
  ASSERT_TRUE(
      MountLayerStack({l.mountpoint, t.mountpoint, u.mountpoint}, merged).ok());
  EXPECT_EQ(ListDir(merged), (std::set<std::string>{"newroot", "rec"}));
  EXPECT_EQ(ListDir(merged + "/rec"), std::set<std::string>{"new"});
  EXPECT_EQ(umount2(merged.c_str(), 0), 0) << strerror(errno);
  for (const LayerMount* m : {&l, &u, &t}) {
    EXPECT_EQ(UnmountLayer(m->mountpoint).exit_code, 0);
  }
  EXPECT_EQ(janitor.DetachAll(), 0) << "the test left a mount behind";
}

// An image of many layers whose paths are long, and hold ',' and ':' (a
// --cache-dir may): overlayfs splits its options at both, and mount(2) takes
// one page of them, which 150 such paths overflow (the mount failed).
TEST(LayerStackTest, ManyLayersWithLongPathsHoldingCommasAndColons) {
  LAZYPULL_SKIP_WITHOUT_FUSE();
  MountJanitor janitor;
  const std::string base = MakeTempDir("many") + "/cache,dir:with " +
                           std::string(60, 'x') + ",long:name";
  ASSERT_EQ(mkdir(base.c_str(), 0755), 0) << strerror(errno);
  constexpr int kLayers = 150;
  std::vector<std::string> lowers;
  for (int i = 0; i < kLayers; ++i) {
    // (One spelled with a double slash: the same directory.)
    lowers.push_back(absl::StrCat(base, i == 3 ? "//" : "/", "layer-", i));
    ASSERT_EQ(mkdir(lowers.back().c_str(), 0755), 0) << strerror(errno);
    ASSERT_NO_FATAL_FAILURE(
        WriteFile(absl::StrCat(lowers.back(), "/f", i), absl::StrCat(i)));
    ASSERT_NO_FATAL_FAILURE(
        WriteFile(lowers.back() + "/top", absl::StrCat("layer ", i)));
  }
  const std::string merged = MakeTempDir("merged") + "/at,a:b";
  ASSERT_EQ(mkdir(merged.c_str(), 0755), 0) << strerror(errno);
  janitor.Track(merged);
  char cwd_before[PATH_MAX];
  ASSERT_NE(getcwd(cwd_before, sizeof(cwd_before)), nullptr);
  absl::Status st = MountLayerStack(lowers, merged);
  ASSERT_TRUE(st.ok()) << st;
  char cwd_after[PATH_MAX];
  ASSERT_NE(getcwd(cwd_after, sizeof(cwd_after)), nullptr);
  EXPECT_STREQ(cwd_after, cwd_before) << "the caller's directory changed";
  EXPECT_EQ(Content(merged + "/top"), absl::StrCat("layer ", kLayers - 1));
  EXPECT_EQ(Content(merged + "/f0"), "0");
  EXPECT_EQ(Content(merged + "/f3"), "3");
  EXPECT_EQ(Content(merged + "/f77"), "77");
  EXPECT_EQ(Listing(merged).size(), static_cast<size_t>(kLayers + 1));
  EXPECT_EQ(umount2(merged.c_str(), 0), 0) << strerror(errno);
  // A few layers: the options fit, the paths are escaped in place.
  st = MountLayerStack({lowers[0], lowers[1]}, merged);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(Content(merged + "/top"), "layer 1");
  EXPECT_EQ(Listing(merged).size(), 3u);
  EXPECT_EQ(umount2(merged.c_str(), 0), 0) << strerror(errno);
  EXPECT_EQ(janitor.DetachAll(), 0) << "the test left a mount behind";
}

TEST_F(OverlayTest, ConvertedLayers) {
  const std::string big_upper = Payload(200000, 1);
  const std::string big_lower = Payload(150000, 2);
  TarBuilder upper;
  upper.File("keep.txt", "upper keep\n")
      .File(".wh.removed", "")
      .File(".wh.gonedir", "")
      .Dir("opq/")
      .File("opq/.wh..wh..opq", "")
      .File("opq/new.txt", "upper opq\n")
      .Dir("merged/")
      .File("merged/.wh.gone", "")
      .File("merged/upper.txt", "upper merged\n")
      .File("upper-only.bin", big_upper)
      .Symlink("kind", "keep.txt");
  TarBuilder lower;
  lower.File("keep.txt", "lower keep\n")
      .File("removed", "lower removed\n")
      .Dir("gonedir/")
      .File("gonedir/a", "a\n")
      .Dir("gonedir/b/")
      .File("gonedir/b/c", "c\n")
      .Dir("opq/")
      .File("opq/other", "lower opq\n")
      .Dir("opq/sub/")
      .File("opq/sub/x", "x\n")
      .Dir("merged/")
      .File("merged/gone", "lower gone\n")
      .File("merged/lower.txt", "lower merged\n")
      .File("lower-only.bin", big_lower)
      .Dir("kind/")
      .File("kind/child", "lower kind\n");
  LayerMount up, low;
  ASSERT_NO_FATAL_FAILURE(
      ConvertAndMount(&janitor_, upper.Finish(), "estargz", &up));
  ASSERT_NO_FATAL_FAILURE(
      ConvertAndMount(&janitor_, lower.Finish(), "zstd:chunked", &low));

  // The upper layer as lazypull presents it to overlayfs.
  struct stat st;
  for (const char* w : {"removed", "gonedir", "merged/gone"}) {
    ASSERT_EQ(lstat((up.mountpoint + "/" + w).c_str(), &st), 0) << w;
    EXPECT_TRUE(S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0))
        << w << " is not a whiteout (char 0:0)";
  }
  char v[8];
  ASSERT_EQ(lgetxattr((up.mountpoint + "/opq").c_str(), kTrustedOpaqueXattr, v,
                      sizeof(v)),
            1)
      << strerror(errno);
  EXPECT_EQ(v[0], 'y');
  EXPECT_EQ(ListDir(up.mountpoint + "/opq"), std::set<std::string>{"new.txt"});

  const std::string merged = MakeTempDir("merged");
  janitor_.Track(merged);
  const std::string opts = "lowerdir=" + up.mountpoint + ":" + low.mountpoint;
  ASSERT_EQ(
      mount("overlay", merged.c_str(), "overlay", MS_RDONLY, opts.c_str()), 0)
      << "mount -t overlay -o " << opts << ": " << strerror(errno);

  // Exactly this tree, nothing else.
  struct Want {
    char type;         // 'd', 'f', 'l'
    std::string data;  // file content or link target
  };
  const std::map<std::string, Want> want = {
      {"", {'d', ""}},
      {"keep.txt", {'f', "upper keep\n"}},
      {"kind", {'l', "keep.txt"}},
      {"lower-only.bin", {'f', big_lower}},
      {"merged", {'d', ""}},
      {"merged/lower.txt", {'f', "lower merged\n"}},
      {"merged/upper.txt", {'f', "upper merged\n"}},
      {"opq", {'d', ""}},
      {"opq/new.txt", {'f', "upper opq\n"}},
      {"upper-only.bin", {'f', big_upper}},
  };
  Tree got = WalkTree(merged);
  for (const auto& [path, node] : got) {
    if (!want.count(path)) {
      ADD_FAILURE() << "merged tree has \"" << path << "\" (mode 0" << std::oct
                    << node.st.st_mode << std::dec
                    << "), which overlayfs semantics hide";
    }
  }
  for (const auto& [path, w] : want) {
    auto it = got.find(path);
    if (it == got.end()) {
      ADD_FAILURE() << "merged tree lacks \"" << path << "\"";
      continue;
    }
    const mode_t mode = it->second.st.st_mode;
    switch (w.type) {
      case 'd':
        EXPECT_TRUE(S_ISDIR(mode)) << path;
        break;
      case 'l':
        EXPECT_TRUE(S_ISLNK(mode)) << path;
        EXPECT_EQ(it->second.link, w.data) << path;
        break;
      default:
        EXPECT_TRUE(S_ISREG(mode)) << path;
        EXPECT_TRUE(Content(merged + "/" + path) == w.data)
            << path << ": wrong content";
    }
  }

  EXPECT_EQ(umount2(merged.c_str(), 0), 0) << strerror(errno);
  for (const LayerMount* lm : {&up, &low}) {
    RunResult r = UnmountLayer(lm->mountpoint);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(MountCount(lm->mountpoint), 0);
  }
}

TEST_F(OverlayTest, GoldenLayers) {
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
