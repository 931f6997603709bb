// `lazypull pull` end to end: images built here, pushed with skopeo into
// Debian's docker-registry on 127.0.0.1, pulled by the real binary as root
// (owners, devices), and the merged root filesystem compared exactly.
#include <dirent.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/digest.h"
#include "core/testing/tar_builder.h"
#include "fetch/testing/loopback_http_server.h"
#include "fetch/testing/oci_image.h"
#include "fetch/testing/registry_fixture.h"
#include "fetch/testing/token_server.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull {
namespace {

using testing::OciLayout;
using testing::RegistryServer;
using testing::RegistryServerOptions;
using testing::TarBuilder;
using testing::TarSpec;
using testing::TestDir;
using testing::TestImage;

// One line per node: type, permissions, owner, then what the type has.
std::map<std::string, std::string> Snapshot(const std::string& root) {
  std::map<std::string, std::string> out;
  std::vector<std::string> stack = {""};
  while (!stack.empty()) {
    std::string rel = stack.back();
    stack.pop_back();
    DIR* d = opendir((root + "/" + rel).c_str());
    if (d == nullptr) continue;
    while (struct dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string path = rel.empty() ? name : rel + "/" + name;
      std::string full = root + "/" + path;
      struct stat st;
      lstat(full.c_str(), &st);
      std::string line =
          absl::StrFormat("%o %d:%d", st.st_mode & 07777, st.st_uid, st.st_gid);
      if (S_ISDIR(st.st_mode)) {
        line = "dir " + line;
        stack.push_back(path);
      } else if (S_ISREG(st.st_mode)) {
        std::ifstream f(full, std::ios::binary);
        std::string content((std::istreambuf_iterator<char>(f)),
                            std::istreambuf_iterator<char>());
        line = absl::StrCat("reg ", line, " \"", content,
                            "\" links=", st.st_nlink);
      } else if (S_ISLNK(st.st_mode)) {
        char buf[256] = {0};
        if (readlink(full.c_str(), buf, sizeof(buf) - 1) < 0) {
          ADD_FAILURE() << "readlink " << full << ": " << strerror(errno);
        }
        line = absl::StrCat("symlink -> ", buf);
      } else if (S_ISCHR(st.st_mode)) {
        line = absl::StrCat("char ", line, " ", major(st.st_rdev), ":",
                            minor(st.st_rdev));
      } else if (S_ISFIFO(st.st_mode)) {
        line = "fifo " + line;
      }
      char names[1024];
      ssize_t n = llistxattr(full.c_str(), names, sizeof(names));
      for (ssize_t i = 0; i < n;) {
        std::string k(names + i);
        i += static_cast<ssize_t>(k.size()) + 1;
        if (!absl::StartsWith(k, "user.")) continue;
        char v[256];
        ssize_t vn = lgetxattr(full.c_str(), k.c_str(), v, sizeof(v));
        absl::StrAppend(&line, " ", k, "=", std::string(v, vn > 0 ? vn : 0));
      }
      out[path] = line;
    }
    closedir(d);
  }
  return out;
}

TarSpec Spec(const std::string& name, char type, uint32_t mode,
             const std::string& content = "") {
  TarSpec s;
  s.name = name;
  s.typeflag = type;
  s.mode = mode;
  if (type == '0') s.content = content;
  if (type == '1' || type == '2') s.link = content;
  return s;
}

std::string Layer1() {
  TarBuilder b;
  b.Add(Spec("./", '5', 0755));
  b.Add(Spec("etc/", '5', 0755));
  b.Add(Spec("etc/passwd", '0', 0644, "root"));
  TarSpec hosts = Spec("etc/hosts", '0', 0644, "127.0.0.1");
  hosts.xattrs = {{"user.note", "n"}};
  b.Add(hosts);
  b.Add(Spec("etc/remove-me", '0', 0644, "x"));
  b.Add(Spec("var/", '5', 0755));
  b.Add(Spec("var/cache/", '5', 0755));
  b.Add(Spec("var/cache/a", '0', 0644, "a"));
  b.Add(Spec("var/cache/b/", '5', 0755));
  b.Add(Spec("var/cache/b/c", '0', 0644, "c"));
  b.Add(Spec("bin/", '5', 0755));
  b.Add(Spec("bin/bash", '0', 0755, "bash-binary"));
  b.Add(Spec("bin/su", '0', 04755, "su"));
  b.Add(Spec("usr/", '5', 0755));
  b.Add(Spec("usr/lib/", '5', 0755));
  b.Add(Spec("usr/lib/libc.so", '0', 0644, "libc"));
  b.Add(Spec("lib", '2', 0777, "usr/lib"));
  b.Add(Spec("data/", '5', 0700));
  b.Add(Spec("data/keep", '0', 0600, "k"));
  b.Add(Spec("f", '0', 0644, "file-then-dir"));
  b.Add(Spec("dev/", '5', 0755));
  TarSpec null = Spec("dev/null", '3', 0666);
  null.dev_major = 1;
  null.dev_minor = 3;
  b.Add(null);
  b.Add(Spec("run/", '5', 0755));
  b.Add(Spec("run/fifo", '6', 0600));
  TarSpec home = Spec("home/user/", '5', 0750);
  home.uid = home.gid = 1000;
  b.Add(home);
  TarSpec uf = Spec("home/user/file", '0', 0640, "u");
  uf.uid = uf.gid = 1000;
  b.Add(uf);
  return b.Finish();
}

std::string Layer2() {
  TarBuilder b;
  b.Add(Spec("etc/", '5', 0755));
  b.Add(Spec("etc/.wh.remove-me", '0', 0));
  b.Add(Spec("etc/passwd", '0', 0644, "root\nuser"));
  b.Add(Spec("var/cache/.wh..wh..opq", '0', 0));
  b.Add(Spec("var/cache/new", '0', 0644, "new"));
  b.Add(Spec(".wh.data", '0', 0));
  b.Add(Spec("f/", '5', 0755));
  b.Add(Spec("f/inside", '0', 0644, "i"));
  b.Add(Spec("bin/sh", '1', 0755, "bin/bash"));  // to a lower layer's file
  b.Add(Spec("usr/lib/.wh.libc.so", '0', 0));
  b.Add(Spec("usr/lib/libc.so.6", '0', 0644, "libc6"));
  return b.Finish();
}

std::string Layer3() {
  TarBuilder b;
  b.Add(Spec("data/", '5', 0755));
  b.Add(Spec("data/again", '0', 0644, "again"));
  b.Add(Spec("var/cache/.wh.new", '0', 0));
  TarSpec etc = Spec("etc/", '5', 0711);
  etc.mtime = 1234567890;
  b.Add(etc);
  b.Add(Spec("bin/link", '2', 0777, "bash"));
  b.Add(Spec("bin/x", '0', 0644, "x"));
  b.Add(Spec("bin/y", '1', 0644, "bin/x"));
  b.Add(Spec("newdir/.wh..wh..opq", '0', 0));
  b.Add(Spec("newdir/z", '0', 0644, "z"));
  return b.Finish();
}

const std::map<std::string, std::string>& ExpectedTree() {
  static const auto* m = new std::map<std::string, std::string>{
      {"bin", "dir 755 0:0"},
      {"bin/bash", "reg 755 0:0 \"bash-binary\" links=2"},
      {"bin/sh", "reg 755 0:0 \"bash-binary\" links=2"},
      {"bin/su", "reg 4755 0:0 \"su\" links=1"},
      {"bin/link", "symlink -> bash"},
      {"bin/x", "reg 644 0:0 \"x\" links=2"},
      {"bin/y", "reg 644 0:0 \"x\" links=2"},
      {"data", "dir 755 0:0"},
      {"data/again", "reg 644 0:0 \"again\" links=1"},
      {"dev", "dir 755 0:0"},
      {"dev/null", "char 666 0:0 1:3"},
      {"etc", "dir 711 0:0"},
      {"etc/hosts", "reg 644 0:0 \"127.0.0.1\" links=1 user.note=n"},
      {"etc/passwd", "reg 644 0:0 \"root\nuser\" links=1"},
      {"f", "dir 755 0:0"},
      {"f/inside", "reg 644 0:0 \"i\" links=1"},
      {"home", "dir 755 0:0"},
      {"home/user", "dir 750 1000:1000"},
      {"home/user/file", "reg 640 1000:1000 \"u\" links=1"},
      {"lib", "symlink -> usr/lib"},
      {"newdir", "dir 755 0:0"},
      {"newdir/z", "reg 644 0:0 \"z\" links=1"},
      {"run", "dir 755 0:0"},
      {"run/fifo", "fifo 600 0:0"},
      {"usr", "dir 755 0:0"},
      {"usr/lib", "dir 755 0:0"},
      {"usr/lib/libc.so.6", "reg 644 0:0 \"libc6\" links=1"},
      {"var", "dir 755 0:0"},
      {"var/cache", "dir 755 0:0"},
  };
  return *m;
}

void ExpectTree(const std::string& root,
                const std::map<std::string, std::string>& want) {
  std::map<std::string, std::string> got = Snapshot(root);
  for (const auto& [path, line] : want) {
    auto it = got.find(path);
    if (it == got.end()) {
      ADD_FAILURE() << "missing " << path << " (" << line << ")";
    } else {
      EXPECT_EQ(it->second, line) << path;
    }
  }
  for (const auto& [path, line] : got) {
    if (!want.count(path))
      ADD_FAILURE() << "unexpected " << path << ": " << line;
  }
}

std::vector<std::string> Leftovers(const std::string& parent) {
  std::vector<std::string> out;
  DIR* d = opendir(parent.c_str());
  while (struct dirent* e = d ? readdir(d) : nullptr) {
    if (absl::StrContains(e->d_name, "lazypull-pull")) out.push_back(e->d_name);
  }
  if (d) closedir(d);
  return out;
}

class PullTest : public ::testing::Test {
 protected:
  std::unique_ptr<RegistryServer> StartRegistry(RegistryServerOptions o = {}) {
    if (o.work_dir.empty()) o.work_dir = TestDir("registry");
    auto s = RegistryServer::Start(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  TestImage Push(const RegistryServer& r, const std::string& repo,
                 const std::vector<std::string>& tars,
                 testing::TestCompression c = testing::TestCompression::kGzip,
                 const std::string& creds = "") {
    auto layout =
        OciLayout::Create(TestDir("layout-" + repo.substr(repo.find('/') + 1)));
    EXPECT_TRUE(layout.ok());
    auto img = layout->AddImage(tars, "linux/amd64", c);
    EXPECT_TRUE(img.ok());
    EXPECT_TRUE(layout->Tag("v1", img->manifest).ok());
    absl::Status st =
        testing::PushWithSkopeo(*layout, "v1", r.host(), repo, false, creds);
    EXPECT_TRUE(st.ok()) << st;
    return *img;
  }
  testing::RunResult Pull(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {testing::LazypullBinary(), "pull",
                                     "--hosts-dir", TestDir("no-hosts")};
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::Run(argv);
  }
};

TEST_F(PullTest, MultiLayerImageWithWhiteoutsMergesExactly) {
  ASSERT_EQ(geteuid(), 0u) << "runs as root (owners, devices)";
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  Push(*reg, "os/base", {Layer1(), Layer2(), Layer3()});
  const std::string out = TestDir("pulled") + "/rootfs";
  auto r = Pull({"--plain-http", reg->host() + "/os/base:v1", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(absl::StrContains(r.out, "3 layers")) << r.out;
  EXPECT_TRUE(absl::StrContains(r.out, "MB/s")) << r.out;
  ExpectTree(out, ExpectedTree());
  struct stat st;
  ASSERT_EQ(lstat((out + "/etc").c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec, 1234567890) << "the upper etc/ entry's time";
  ASSERT_EQ(lstat((out + "/bin/bash").c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec, 1622548800);
  EXPECT_TRUE(Leftovers(TestDir("pulled")).empty());
}

TEST_F(PullTest, ZstdAndUncompressedLayers) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  TarBuilder a, b;
  a.File("z", std::string(200000, 'z'));
  b.File("t", "plain tar");
  Push(*reg, "fmt/zstd", {a.Finish()}, testing::TestCompression::kZstd);
  Push(*reg, "fmt/tar", {b.Finish()}, testing::TestCompression::kNone);
  const std::string d1 = TestDir("z") + "/out", d2 = TestDir("t") + "/out";
  auto r = Pull({"--plain-http", reg->host() + "/fmt/zstd:v1", d1});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(d1 + "/z"), std::string(200000, 'z'));
  r = Pull({"--plain-http", reg->host() + "/fmt/tar:v1", d2});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(d2 + "/t"), "plain tar");
}

TEST_F(PullTest, MultiPlatformIndex) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  auto layout = OciLayout::Create(TestDir("multi"));
  ASSERT_TRUE(layout.ok());
  TarBuilder amd, arm;
  amd.File("arch", "amd64");
  arm.File("arch", "arm64");
  auto i1 = layout->AddImage({amd.Finish()}, "linux/amd64");
  auto i2 = layout->AddImage({arm.Finish()}, "linux/arm64/v8");
  auto idx = layout->AddIndex({i2->manifest, i1->manifest});
  ASSERT_TRUE(layout->Tag("v1", *idx).ok());
  ASSERT_TRUE(
      testing::PushWithSkopeo(*layout, "v1", reg->host(), "multi/app", true)
          .ok());
  const std::string d1 = TestDir("a") + "/out", d2 = TestDir("b") + "/out";
  auto r = Pull({"--plain-http", reg->host() + "/multi/app:v1", d1});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(d1 + "/arch"), "amd64");
  r = Pull({"--plain-http", "--platform", "linux/arm64",
            reg->host() + "/multi/app:v1", d2});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(d2 + "/arch"), "arm64");
  r = Pull({"--plain-http", "--platform", "linux/riscv64",
            reg->host() + "/multi/app:v1", TestDir("c") + "/out"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "linux/arm64/v8")) << r.err;
}

TEST_F(PullTest, CorruptBlobFailsAndLeavesNothing) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  TestImage img = Push(*reg, "bad/blob", {Layer1(), Layer2(), Layer3()});
  // Layer 2 keeps its size and stays valid gzip (the header's MTIME field
  // changes): only the digest can tell.
  std::fstream f(reg->BlobDataPath(img.layers[1].digest),
                 std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good());
  f.seekp(4);
  f.write("\x7f\x7f\x7f\x7f", 4);
  f.close();
  const std::string parent = TestDir("corrupt");
  const std::string out = parent + "/rootfs";
  auto r = Pull({"--plain-http", reg->host() + "/bad/blob:v1", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "layer 2/3")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, img.layers[1].digest.ToString()))
      << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "corrupt")) << r.err;
  struct stat st;
  EXPECT_NE(lstat(out.c_str(), &st), 0) << "DIR must not be created";
  EXPECT_TRUE(Leftovers(parent).empty());

  // An existing empty DIR stays empty.
  mkdir(out.c_str(), 0755);
  r = Pull({"--plain-http", reg->host() + "/bad/blob:v1", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(Snapshot(out).empty());
  EXPECT_TRUE(Leftovers(parent).empty());
}

// The work directory of an earlier pull into DIR that was killed (a
// signal skips the clean-up) goes at the next pull once its process is
// gone; a live pull's stays.
TEST_F(PullTest, WorkDirsOfKilledPullsAreRemoved) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  Push(*reg, "stale/app", {Layer1()});
  const std::string parent = TestDir("stale");
  const std::string out = parent + "/rootfs";
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  ASSERT_GT(dead, 0);
  waitpid(dead, nullptr, 0);  // a pid whose process is gone
  const std::string stale =
      absl::StrCat(parent, "/.rootfs.lazypull-pull.", dead);
  const std::string live =
      absl::StrCat(parent, "/.rootfs.lazypull-pull.", getpid());
  for (const std::string& d : {stale, live}) {
    ASSERT_EQ(mkdir(d.c_str(), 0700), 0);
    std::ofstream(d + "/partial") << "x";
  }
  auto r = Pull({"--plain-http", reg->host() + "/stale/app:v1", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct stat st;
  EXPECT_NE(lstat(stale.c_str(), &st), 0) << "a killed pull's work dir stayed";
  EXPECT_EQ(lstat(live.c_str(), &st), 0);
}

// DIR a mount point - a tmpfs, or a bind mount of a directory on the same
// filesystem as its parent: nothing can be renamed into it from beside it
// (EXDEV), so the work directory is inside it, and a killed pull's work
// directory there neither makes DIR "not empty" nor stays.
TEST_F(PullTest, IntoAMountPoint) {
  if (geteuid() != 0) GTEST_SKIP() << "mounts need root";
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  Push(*reg, "os/base", {Layer1(), Layer2(), Layer3()});
  const std::string parent = TestDir("mountpoints");
  for (const std::string kind : {"tmpfs", "bind"}) {
    SCOPED_TRACE(kind);
    const std::string out = parent + "/" + kind;
    ASSERT_EQ(mkdir(out.c_str(), 0700), 0);
    const int m =
        kind == "tmpfs"
            ? mount("lazypull-test", out.c_str(), "tmpfs", 0, "mode=0700")
            : mount(out.c_str(), out.c_str(), nullptr, MS_BIND, nullptr);
    ASSERT_EQ(m, 0) << strerror(errno);
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    ASSERT_GT(dead, 0);
    waitpid(dead, nullptr, 0);  // a pid whose process is gone
    const std::string stale = absl::StrCat(out, "/.lazypull-pull.", dead);
    ASSERT_EQ(mkdir(stale.c_str(), 0700), 0);
    std::ofstream(stale + "/partial") << "x";
    auto r = Pull({"--plain-http", reg->host() + "/os/base:v1", out});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    ExpectTree(out, ExpectedTree());
    struct stat st;
    ASSERT_EQ(lstat(out.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0755u) << "the image root's mode";
    EXPECT_TRUE(Leftovers(out).empty());
    EXPECT_TRUE(Leftovers(parent).empty());
    EXPECT_EQ(umount2(out.c_str(), MNT_DETACH), 0) << strerror(errno);
  }
}

// A target whose name is near NAME_MAX: the work directory beside it, named
// after it with a suffix, was too long a name (ENAMETOOLONG).
TEST_F(PullTest, ATargetWithALongName) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  Push(*reg, "long/app", {Layer1()});
  const std::string parent = TestDir("long");
  const std::string out = parent + "/" + std::string(250, 'n');
  auto r = Pull({"--plain-http", reg->host() + "/long/app:v1", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  struct stat st;
  EXPECT_EQ(lstat((out + "/etc").c_str(), &st), 0);
  EXPECT_TRUE(Leftovers(parent).empty());
}

// A tree as deep as a 4095-byte path allows (1500 levels here), in two
// layers, so that the second merges into the first level by level, pulled
// under the usual soft limit of 1024 open files: extraction, the merge and
// the work dir's removal hold a descriptor or two per level, so the pull
// raises its soft limit to the hard one first. A deeper name is refused.
TEST_F(PullTest, ADeepTreeUnderTheUsualOpenFileLimit) {
  struct rlimit rl;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 4096) {
    GTEST_SKIP() << "hard open-file limit " << rl.rlim_max << " < 4096";
  }
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  std::string deep;
  for (int i = 0; i < 1500; ++i) deep += "d/";
  TarBuilder a, b, c;
  a.File(deep + "bottom-a", "a");
  b.File(deep + "bottom-b", "b");
  Push(*reg, "deep/ok", {a.Finish(), b.Finish()});
  std::string deeper;
  for (int i = 0; i < 2048; ++i) deeper += "d/";
  c.File(deeper + "x", "x");
  Push(*reg, "deep/toolong", {c.Finish()});

  const std::string parent = TestDir("deep");
  auto pull_at_1024 = [&](const std::string& ref, const std::string& out) {
    std::vector<std::string> argv = {"/bin/sh",
                                     "-c",
                                     "ulimit -Sn 1024 && exec \"$0\" \"$@\"",
                                     testing::LazypullBinary(),
                                     "pull",
                                     "--hosts-dir",
                                     TestDir("no-hosts"),
                                     "--plain-http",
                                     ref,
                                     out};
    return testing::Run(argv);
  };
  auto r = pull_at_1024(reg->host() + "/deep/ok:v1", parent + "/out");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(parent + "/out/" + deep + "bottom-a"), "a");
  EXPECT_EQ(testing::ReadFile(parent + "/out/" + deep + "bottom-b"), "b");
  r = pull_at_1024(reg->host() + "/deep/toolong:v1", parent + "/out2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "longer than 4095 (PATH_MAX)")) << r.err;
  EXPECT_TRUE(Leftovers(parent).empty());
}

TEST_F(PullTest, WrongDiffIdFails) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  auto layout = OciLayout::Create(TestDir("diffid"));
  ASSERT_TRUE(layout.ok());
  TarBuilder t;
  t.File("a", "a");
  std::string tar = t.Finish();
  auto layer = layout->AddBlob("application/vnd.oci.image.layer.v1.tar+gzip",
                               testing::GzipForTest(tar));
  std::string config = absl::StrCat(
      "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":"
      "\"layers\",\"diff_ids\":[\"",
      Sha256::Of("not the tar").ToString(), "\"]}}");
  auto cfg =
      layout->AddBlob("application/vnd.oci.image.config.v1+json", config);
  auto man = layout->AddBlob(
      "application/vnd.oci.image.manifest.v1+json",
      absl::StrCat("{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci."
                   "image.manifest.v1+json\",\"config\":",
                   cfg->Json(), ",\"layers\":[", layer->Json(), "]}"));
  ASSERT_TRUE(layout->Tag("v1", *man).ok());
  ASSERT_TRUE(
      testing::PushWithSkopeo(*layout, "v1", reg->host(), "bad/diffid").ok());
  const std::string out = TestDir("d") + "/out";
  auto r = Pull({"--plain-http", reg->host() + "/bad/diffid:v1", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "diff_id")) << r.err;
  struct stat st;
  EXPECT_NE(lstat(out.c_str(), &st), 0);
}

// A blob the manifest lists twice (the same layer applied again higher up,
// as two identical COPY steps make) is downloaded once and applied twice.
TEST_F(PullTest, ARepeatedLayerIsDownloadedOnce) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  TarBuilder a, b;
  a.File("x", "one").File("a", std::string(300000, 'a'));
  b.File("x", "two").File(".wh.a", "").File("b", "b");
  const std::string layer_a = a.Finish();
  TestImage img = Push(*reg, "dup/layers", {layer_a, b.Finish(), layer_a});
  ASSERT_EQ(img.layers.size(), 3u);
  ASSERT_EQ(img.layers[0].digest, img.layers[2].digest);
  const std::string out = TestDir("dup") + "/rootfs";
  auto r = Pull({"--plain-http", reg->host() + "/dup/layers:v1", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(out + "/x"), "one") << "the top layer is A";
  EXPECT_EQ(testing::ReadFile(out + "/a"), std::string(300000, 'a'));
  EXPECT_EQ(testing::ReadFile(out + "/b"), "b");
  const uint64_t want = img.layers[0].size + img.layers[1].size;
  EXPECT_TRUE(absl::StrContains(r.out, absl::StrCat(want, " bytes downloaded")))
      << r.out << " (want " << want << ")";
  int gets = 0;
  for (absl::string_view line : absl::StrSplit(reg->Log(), '\n')) {
    if (absl::StrContains(line, "\"GET /v2/dup/layers/blobs/" +
                                    img.layers[0].digest.ToString())) {
      ++gets;
    }
  }
  EXPECT_EQ(gets, 1) << reg->Log();
  EXPECT_TRUE(Leftovers(TestDir("dup")).empty());
}

// A non-distributable layer the registry does not hold (skopeo does not
// upload it) is fetched from its descriptor's `urls` (one that 404s is
// skipped), checked as any blob: wrong bytes there fail the pull.
TEST_F(PullTest, NonDistributableLayerFromItsUrls) {
  RegistryServerOptions ro;
  ro.allow_manifest_urls = true;
  auto reg = StartRegistry(ro);
  ASSERT_NE(reg, nullptr);
  TarBuilder base, foreign;
  base.File("etc/base", "base");
  foreign.File("foreign/data", std::string(100000, 'f'));
  const std::string base_tar = base.Finish(), foreign_tar = foreign.Finish();
  const std::string foreign_gz = testing::GzipForTest(foreign_tar);
  bool lie = false;
  auto files = testing::LoopbackHttpServer::Start(
      [&](const testing::TestRequest& q, testing::TestResponse* a) {
        if (q.path != "/layers/foreign.tar.gz") {
          a->status = 404;
          return;
        }
        a->body = foreign_gz;
        if (lie) a->body += "x";
      });
  ASSERT_TRUE(files.ok()) << files.status();
  auto layout = OciLayout::Create(TestDir("foreign-layout"));
  ASSERT_TRUE(layout.ok());
  auto l0 = layout->AddBlob("application/vnd.oci.image.layer.v1.tar+gzip",
                            testing::GzipForTest(base_tar));
  ASSERT_TRUE(l0.ok());
  const std::string media =
      "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
  const std::string foreign_desc = absl::StrCat(
      "{\"mediaType\":\"", media, "\",\"digest\":\"",
      Sha256::Of(foreign_gz).ToString(), "\",\"size\":", foreign_gz.size(),
      ",\"urls\":[\"", (*files)->url(), "/layers/missing.tar.gz\",\"",
      (*files)->url(), "/layers/foreign.tar.gz\"]}");
  auto cfg = layout->AddBlob(
      "application/vnd.oci.image.config.v1+json",
      absl::StrCat("{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":"
                   "{\"type\":\"layers\",\"diff_ids\":[\"",
                   Sha256::Of(base_tar).ToString(), "\",\"",
                   Sha256::Of(foreign_tar).ToString(), "\"]}}"));
  ASSERT_TRUE(cfg.ok());
  auto man = layout->AddBlob(
      "application/vnd.oci.image.manifest.v1+json",
      absl::StrCat("{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci."
                   "image.manifest.v1+json\",\"config\":",
                   cfg->Json(), ",\"layers\":[", l0->Json(), ",", foreign_desc,
                   "]}"));
  ASSERT_TRUE(man.ok());
  ASSERT_TRUE(layout->Tag("v1", *man).ok());
  // The foreign layer's blob is only in the layout: skopeo leaves it out.
  absl::Status pushed =
      testing::PushWithSkopeo(*layout, "v1", reg->host(), "foreign/app");
  ASSERT_TRUE(pushed.ok()) << pushed;
  const std::string out = TestDir("foreign") + "/rootfs";
  auto r = Pull({"--plain-http", reg->host() + "/foreign/app:v1", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(out + "/etc/base"), "base");
  EXPECT_EQ(testing::ReadFile(out + "/foreign/data"), std::string(100000, 'f'));
  // Wrong bytes at the URL: the pull fails and says why.
  lie = true;
  const std::string out2 = TestDir("foreign2") + "/rootfs";
  r = Pull({"--plain-http", reg->host() + "/foreign/app:v1", out2});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, Sha256::Of(foreign_gz).ToString()))
      << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "descriptor says")) << r.err;
  struct stat st;
  EXPECT_NE(lstat(out2.c_str(), &st), 0);
}

TEST_F(PullTest, HostileLayerWritesNothingOutside) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  const std::string parent = TestDir("hostile");
  const std::string outside = parent + "/outside";
  mkdir(outside.c_str(), 0755);
  TarBuilder a, b;
  a.Symlink("escape", outside);
  b.File("escape/pwned", "x");
  Push(*reg, "bad/symlink", {a.Finish(), b.Finish()});
  TarBuilder c;
  c.File("../../pwned", "x");
  Push(*reg, "bad/dotdot", {c.Finish()});
  // The second layer replaces the symlink with a directory (layers never
  // write through a lower layer's symlink), so this one succeeds...
  auto r =
      Pull({"--plain-http", reg->host() + "/bad/symlink:v1", parent + "/out1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  struct stat st;
  EXPECT_NE(lstat((outside + "/pwned").c_str(), &st), 0);
  EXPECT_EQ(testing::ReadFile(parent + "/out1/escape/pwned"), "x");
  // ... and a ".." name is refused.
  r = Pull({"--plain-http", reg->host() + "/bad/dotdot:v1", parent + "/out2"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "..")) << r.err;
  EXPECT_NE(lstat((parent + "/pwned").c_str(), &st), 0);
  EXPECT_NE(lstat((TestDir("") + "/pwned").c_str(), &st), 0);
}

TEST_F(PullTest, RefusesANonEmptyDir) {
  auto reg = StartRegistry();
  ASSERT_NE(reg, nullptr);
  const std::string out = TestDir("full");
  std::ofstream(out + "/existing") << "x";
  auto r = Pull({"--plain-http", reg->host() + "/any/thing:v1", out});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "not empty")) << r.err;
}

TEST_F(PullTest, BasicAuthOverTlsWithDockerConfig) {
  const std::string dir = TestDir("auth");
  std::string htpasswd;
  ASSERT_TRUE(
      testing::RunProcess({"htpasswd", "-Bbn", "alice", "pw"}, &htpasswd).ok());
  std::ofstream(dir + "/htpasswd") << htpasswd;
  RegistryServerOptions o;
  o.tls = true;
  o.htpasswd = dir + "/htpasswd";
  auto reg = StartRegistry(o);
  ASSERT_NE(reg, nullptr);
  Push(*reg, "private/base", {Layer1()}, testing::TestCompression::kGzip,
       "alice:pw");
  const std::string cfg = TestDir("docker");
  std::ofstream(cfg + "/config.json")
      << "{\"auths\":{\"" << reg->host() << "\":{\"auth\":\""
      << absl::Base64Escape("alice:pw") << "\"}}}";
  setenv("DOCKER_CONFIG", cfg.c_str(), 1);
  const std::string out = TestDir("out") + "/rootfs";
  auto r = Pull(
      {"--ca-file", reg->ca_file(), reg->host() + "/private/base:v1", out});
  unsetenv("DOCKER_CONFIG");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(testing::ReadFile(out + "/etc/passwd"), "root");
  EXPECT_FALSE(absl::StrContains(r.out + r.err, "pw\""));
  int h2 = 0;
  for (absl::string_view line : absl::StrSplit(reg->Log(), '\n')) {
    if (absl::StrContains(line, "\"lazypull/")) {
      EXPECT_TRUE(absl::StrContains(line, " HTTP/2.0\"")) << line;
      ++h2;
    }
  }
  EXPECT_GE(h2, 3);
  // Without credentials: a clear message.
  const std::string empty = TestDir("empty-docker");
  setenv("DOCKER_CONFIG", empty.c_str(), 1);
  setenv("XDG_RUNTIME_DIR", empty.c_str(), 1);
  r = Pull({"--ca-file", reg->ca_file(), reg->host() + "/private/base:v1",
            TestDir("out2") + "/rootfs"});
  unsetenv("DOCKER_CONFIG");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(r.err, "requires a user name and password"))
      << r.err;
}

TEST_F(PullTest, BearerTokenAuth) {
  const std::string dir = TestDir("token");
  ASSERT_TRUE(testing::MakeSelfSignedCert(dir + "/signer.crt",
                                          dir + "/signer.key", "signer")
                  .ok());
  const std::string storage = dir + "/storage";
  mkdir(storage.c_str(), 0755);
  {
    RegistryServerOptions plain;
    plain.work_dir = TestDir("push");
    plain.storage_dir = storage;
    auto push = StartRegistry(plain);
    ASSERT_NE(push, nullptr);
    Push(*push, "tok/base", {Layer1(), Layer2(), Layer3()});
  }
  testing::TokenServerOptions to;
  to.key_file = dir + "/signer.key";
  to.cert_file = dir + "/signer.crt";
  to.user = "bob";
  to.password = "pw";
  auto tokens = testing::TokenServer::Start(to);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  RegistryServerOptions o;
  o.work_dir = TestDir("serve");
  o.storage_dir = storage;
  o.token = RegistryServerOptions::Token{(*tokens)->realm(), to.service,
                                         to.issuer, to.cert_file};
  auto reg = StartRegistry(o);
  ASSERT_NE(reg, nullptr);
  const std::string cfg = TestDir("docker");
  std::ofstream(cfg + "/config.json")
      << "{\"auths\":{\"" << reg->host() << "\":{\"auth\":\""
      << absl::Base64Escape("bob:pw") << "\"}}}";
  setenv("DOCKER_CONFIG", cfg.c_str(), 1);
  const std::string out = TestDir("out") + "/rootfs";
  auto r = Pull({"--plain-http", reg->host() + "/tok/base:v1", out});
  unsetenv("DOCKER_CONFIG");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectTree(out, ExpectedTree());
  EXPECT_EQ((*tokens)->issued(), 1);
}

}  // namespace
}  // namespace lazypull
