// DirectoryTar against the real file system and GNU tar: a tree holding
// every file type, owners, special mode bits, xattrs, hardlinks and long
// names goes through the tar and comes back identical (as root; without
// root the root-only parts are left out, saying so).
#include "core/dir_tar.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/tar_reader.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull {
namespace {

using testing::CompareTrees;
using testing::MakeTempDir;
using testing::TreeCompareOptions;

void WriteFile(const std::string& path, const std::string& data,
               mode_t mode = 0644) {
  std::ofstream(path, std::ios::binary) << data;
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;
}

void MkDir(const std::string& path, mode_t mode = 0755) {
  ASSERT_EQ(mkdir(path.c_str(), mode), 0) << path << ": " << strerror(errno);
  ASSERT_EQ(chmod(path.c_str(), mode), 0) << path;
}

// Whole-second times everywhere (a tar keeps seconds), children first so
// that setting a directory's time is the last change to it.
void SetTimes(const std::string& root, const std::string& rel, int64_t t) {
  const std::string path = rel.empty() ? root : root + "/" + rel;
  struct stat st;
  ASSERT_EQ(lstat(path.c_str(), &st), 0) << path;
  if (S_ISDIR(st.st_mode)) {
    for (const std::string& n : testing::ListDir(path)) {
      SetTimes(root, rel.empty() ? n : rel + "/" + n, t + 1);
    }
  }
  struct timespec ts[2] = {{t, 0}, {t, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0)
      << path << ": " << strerror(errno);
}

struct TarEntry {
  TarHeader h;
  std::string data;
};

std::vector<TarEntry> ReadTar(const std::string& tar) {
  MemoryByteStream in(tar);
  TarReader r(&in);
  std::vector<TarEntry> out;
  while (true) {
    TarEntry e;
    absl::StatusOr<bool> more = r.Next(&e.h);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    while (true) {
      absl::StatusOr<absl::string_view> d = r.ReadData(1 << 20);
      EXPECT_TRUE(d.ok()) << d.status();
      if (!d.ok() || d->empty()) break;
      e.data.append(d->data(), d->size());
    }
    out.push_back(std::move(e));
  }
  return out;
}

// Runs GNU tar extracting `tar` into `dir`; returns its stderr.
std::string GnuTarExtract(const std::string& tar, const std::string& dir) {
  const std::string file = dir + ".tar";
  std::ofstream(file, std::ios::binary) << tar;
  testing::RunResult r =
      testing::Run({"/bin/tar", "-xpf", file, "-C", dir, "--numeric-owner",
                    "--xattrs", "--xattrs-include=*", "--same-owner"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.err;
}

const std::string kLongComponent(200, 'c');  // > 100: needs a PAX path

class DirTarTest : public ::testing::Test {
 protected:
  void SetUp() override { root_ = geteuid() == 0; }

  // Builds the tree at `dir`. `reverse` creates the entries in another
  // order (different inode numbers and directory order, same tree).
  void BuildTree(const std::string& dir, bool reverse = false) {
    MkDir(dir, 0755);
    std::vector<std::function<void()>> steps;
    steps.push_back([&] {
      MkDir(dir + "/bin");
      WriteFile(dir + "/bin/tool", std::string(3 << 20, 'x') + "end", 04755);
      WriteFile(dir + "/bin/empty", "");
      // Three names of one file: "bin/a" (first in order) and two links.
      WriteFile(dir + "/bin/a", "shared", 0640);
      ASSERT_EQ(link((dir + "/bin/a").c_str(), (dir + "/bin/b").c_str()), 0);
      ASSERT_EQ(link((dir + "/bin/a").c_str(), (dir + "/z-link").c_str()), 0);
    });
    steps.push_back([&] {
      MkDir(dir + "/tmp", 01777);
      MkDir(dir + "/setgid", 02755);
      MkDir(dir + "/empty-dir", 0700);
      // Symlinks, one pointing outside the tree, one with a long target.
      ASSERT_EQ(symlink("/etc/passwd", (dir + "/outside").c_str()), 0);
      ASSERT_EQ(symlink("../..", (dir + "/up").c_str()), 0);
      ASSERT_EQ(symlink(std::string(150, 't').c_str(),
                        (dir + "/long-target").c_str()),
                0);
      ASSERT_EQ(mkfifo((dir + "/fifo").c_str(), 0600), 0);
      WriteFile(dir + "/h\xc3\xa9llo", "utf-8 name");
    });
    steps.push_back([&] {
      // Long names: a 200-byte component (PAX path), a path of > 255
      // bytes made of short components (USTAR prefix split) and one of
      // > 255 bytes that cannot be split.
      std::string p = dir + "/deep";
      MkDir(p);
      for (int i = 0; i < 6; ++i) {
        p += "/" + std::string(40, static_cast<char>('a' + i));
        MkDir(p);
      }
      WriteFile(p + "/file-at-depth", "deep");
      MkDir(dir + "/" + kLongComponent);
      WriteFile(dir + "/" + kLongComponent + "/" + kLongComponent, "long");
    });
    if (reverse) std::reverse(steps.begin(), steps.end());
    for (auto& s : steps) s();
    if (root_) {
      ASSERT_EQ(mknod((dir + "/null").c_str(), S_IFCHR | 0666, makedev(1, 3)),
                0);
      ASSERT_EQ(
          mknod((dir + "/loop").c_str(), S_IFBLK | 0660, makedev(259, 70000)),
          0);
      ASSERT_EQ(lchown((dir + "/bin/tool").c_str(), 1234, 5678), 0);
      ASSERT_EQ(lchown((dir + "/outside").c_str(), 42, 43), 0);
      // Above USTAR's 7 octal digits: a PAX uid/gid.
      ASSERT_EQ(lchown((dir + "/bin/empty").c_str(), 3000000, 4000000), 0);
      ASSERT_EQ(chmod((dir + "/bin/tool").c_str(), 04755), 0);
      ASSERT_EQ(setxattr((dir + "/bin").c_str(), "trusted.note", "t", 1, 0), 0);
      // The host overlay's state, not the image's: left out.
      ASSERT_EQ(
          setxattr((dir + "/bin").c_str(), "trusted.overlay.opaque", "y", 1, 0),
          0);
      // A binary value (a v2 file capability: cap_net_bind_service).
      const std::string cap(
          "\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00"
          "\x00\x00\x00\x00\x00\x00\x00\x00",
          20);
      ASSERT_EQ(setxattr((dir + "/bin/tool").c_str(), "security.capability",
                         cap.data(), cap.size(), 0),
                0)
          << strerror(errno);
    }
    ASSERT_EQ(setxattr((dir + "/bin/tool").c_str(), "user.note", "hello", 5, 0),
              0)
        << strerror(errno);
    const std::string big(3000, 'v');  // a long PAX record
    ASSERT_EQ(
        setxattr((dir + "/tmp").c_str(), "user.big", big.data(), big.size(), 0),
        0);
    SetTimes(dir, "", 1600000000);
  }

  bool root_ = false;
};

TEST_F(DirTarTest, GnuTarExtractsTheSameTree) {
  const std::string base = MakeTempDir("dir-tar");
  const std::string src = base + "/src";
  BuildTree(src);
  // A socket: skipped with a warning.
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(s, 0);
  struct sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  // Bound by a relative name: the absolute one may exceed sun_path.
  std::strcpy(sa.sun_path, "sock");
  const int cwd = open(".", O_RDONLY | O_DIRECTORY);
  ASSERT_GE(cwd, 0);
  ASSERT_EQ(chdir(src.c_str()), 0);
  const int bound =
      bind(s, reinterpret_cast<struct sockaddr*>(&sa), sizeof(sa));
  ASSERT_EQ(fchdir(cwd), 0);
  close(cwd);
  ASSERT_EQ(bound, 0) << strerror(errno);
  close(s);
  struct timespec ts[2] = {{1600000000, 0}, {1600000000, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, src.c_str(), ts, 0), 0);

  std::vector<std::string> warnings;
  DirTarOptions o;
  o.warn = [&](const std::string& w) { warnings.push_back(w); };
  absl::StatusOr<std::string> tar = DirectoryTar(src, o);
  ASSERT_TRUE(tar.ok()) << tar.status();
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_TRUE(absl::StrContains(warnings[0], "sock")) << warnings[0];
  EXPECT_EQ(tar->size() % 512, 0u);
  EXPECT_EQ(tar->substr(tar->size() - 1024), std::string(1024, '\0'));

  const std::string out = base + "/out";
  MkDir(out);
  EXPECT_EQ(GnuTarExtract(*tar, out), "");
  TreeCompareOptions c;
  c.label = "source vs GNU tar extraction";
  c.ignore_paths = {"sock"};
  c.ignore_xattrs = {"trusted.overlay.opaque"};
  CompareTrees(src, out, c);

  // What lazypull's own reader sees.
  std::vector<TarEntry> entries = ReadTar(*tar);
  std::map<std::string, const TarEntry*> by_name;
  std::vector<std::string> order;
  for (const TarEntry& e : entries) {
    by_name[e.h.name] = &e;
    order.push_back(e.h.name);
  }
  ASSERT_FALSE(order.empty());
  EXPECT_EQ(order[0], "./");
  EXPECT_EQ(by_name.count("sock"), 0u);
  // Parents before children, each directory's names sorted.
  EXPECT_LT(std::find(order.begin(), order.end(), "bin/") - order.begin(),
            std::find(order.begin(), order.end(), "bin/a") - order.begin());
  EXPECT_LT(std::find(order.begin(), order.end(), "bin/a") - order.begin(),
            std::find(order.begin(), order.end(), "bin/b") - order.begin());
  ASSERT_TRUE(by_name.count("bin/b"));
  EXPECT_EQ(by_name["bin/a"]->h.type, TarType::kReg);
  EXPECT_EQ(by_name["bin/a"]->data, "shared");
  EXPECT_EQ(by_name["bin/b"]->h.type, TarType::kHardlink);
  EXPECT_EQ(by_name["bin/b"]->h.link_name, "bin/a");
  ASSERT_TRUE(by_name.count("z-link"));
  EXPECT_EQ(by_name["z-link"]->h.link_name, "bin/a");
  ASSERT_TRUE(by_name.count("outside"));
  EXPECT_EQ(by_name["outside"]->h.type, TarType::kSymlink);
  EXPECT_EQ(by_name["outside"]->h.link_name, "/etc/passwd");
  EXPECT_EQ(by_name["long-target"]->h.link_name, std::string(150, 't'));
  EXPECT_EQ(by_name["tmp/"]->h.mode, 01777);
  EXPECT_EQ(by_name["setgid/"]->h.mode, 02755);
  EXPECT_EQ(by_name["fifo"]->h.type, TarType::kFifo);
  EXPECT_EQ(by_name["bin/tool"]->h.mtime_sec, 1600000002);
  const std::string long_file = kLongComponent + "/" + kLongComponent;
  ASSERT_TRUE(by_name.count(long_file));
  EXPECT_EQ(by_name[long_file]->data, "long");
  EXPECT_TRUE(absl::StrContains(by_name[long_file]->h.raw, " path="));
  std::string deep = "deep";
  for (int i = 0; i < 6; ++i) {
    deep += "/" + std::string(40, static_cast<char>('a' + i));
  }
  deep += "/file-at-depth";
  ASSERT_GT(deep.size(), 255u);
  ASSERT_TRUE(by_name.count(deep));
  EXPECT_EQ(by_name[deep]->data, "deep");
  bool user_note = false;
  for (const auto& [k, v] : by_name["bin/tool"]->h.xattrs) {
    if (k == "user.note") user_note = v == "hello";
  }
  EXPECT_TRUE(user_note);
  if (root_) {
    std::vector<std::string> bin_xattrs;
    for (const auto& [k, v] : by_name["bin/"]->h.xattrs)
      bin_xattrs.push_back(k);
    EXPECT_EQ(bin_xattrs, std::vector<std::string>{"trusted.note"});
    EXPECT_EQ(by_name["bin/tool"]->h.mode, 04755);
    EXPECT_EQ(by_name["bin/tool"]->h.uid, 1234u);
    EXPECT_EQ(by_name["bin/empty"]->h.uid, 3000000u);
    EXPECT_EQ(by_name["bin/empty"]->h.gid, 4000000u);
    EXPECT_EQ(by_name["null"]->h.type, TarType::kChar);
    EXPECT_EQ(by_name["loop"]->h.type, TarType::kBlock);
    EXPECT_EQ(by_name["loop"]->h.dev_major, 259u);
    EXPECT_EQ(by_name["loop"]->h.dev_minor, 70000u);
  } else {
    std::cout << "SKIPPED the root-only parts (devices, owners, trusted.* "
                 "and security.* xattrs): not root"
              << std::endl;
  }
}

TEST_F(DirTarTest, DeterministicWhateverTheCreationOrder) {
  const std::string base = MakeTempDir("dir-tar-det");
  BuildTree(base + "/one");
  BuildTree(base + "/two", /*reverse=*/true);
  absl::StatusOr<std::string> a = DirectoryTar(base + "/one");
  absl::StatusOr<std::string> a2 = DirectoryTar(base + "/one");
  absl::StatusOr<std::string> b = DirectoryTar(base + "/two");
  ASSERT_TRUE(a.ok() && a2.ok() && b.ok());
  EXPECT_TRUE(*a == *a2);
  EXPECT_TRUE(*a == *b) << "the same tree made in another order differs";
  // Streaming in pieces gives the same bytes as the string form.
  std::string streamed;
  int calls = 0;
  absl::StatusOr<DirTarStats> st =
      WriteDirectoryTar(base + "/one", {}, [&](absl::string_view d) {
        ++calls;
        streamed.append(d.data(), d.size());
        return absl::OkStatus();
      });
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_TRUE(streamed == *a);
  EXPECT_GT(calls, 1);  // the 3 MiB file went out in more than one piece
  EXPECT_EQ(st->bytes, a->size());
  EXPECT_GT(st->entries, 20u);
}

TEST_F(DirTarTest, SymlinkedDirectoryOutsideIsNotFollowed) {
  const std::string base = MakeTempDir("dir-tar-link");
  MkDir(base + "/elsewhere");
  WriteFile(base + "/elsewhere/secret", "do not include");
  MkDir(base + "/root");
  ASSERT_EQ(symlink((base + "/elsewhere").c_str(), (base + "/root/ln").c_str()),
            0);
  absl::StatusOr<std::string> tar = DirectoryTar(base + "/root");
  ASSERT_TRUE(tar.ok()) << tar.status();
  EXPECT_FALSE(absl::StrContains(*tar, "do not include"));
  EXPECT_FALSE(absl::StrContains(*tar, "secret"));
  std::vector<TarEntry> entries = ReadTar(*tar);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[1].h.name, "ln");
  EXPECT_EQ(entries[1].h.type, TarType::kSymlink);
  EXPECT_EQ(entries[1].h.link_name, base + "/elsewhere");
}

TEST_F(DirTarTest, ErrorsNameThePath) {
  absl::StatusOr<std::string> tar = DirectoryTar("/nonexistent/dir");
  ASSERT_FALSE(tar.ok());
  EXPECT_TRUE(absl::StrContains(tar.status().message(), "/nonexistent/dir"));
  const std::string base = MakeTempDir("dir-tar-err");
  WriteFile(base + "/file", "x");
  tar = DirectoryTar(base + "/file");
  ASSERT_FALSE(tar.ok());
  EXPECT_TRUE(absl::StrContains(tar.status().message(), "not a directory"));
  // A failing sink stops the walk with its error.
  absl::StatusOr<DirTarStats> st =
      WriteDirectoryTar(base, {}, [](absl::string_view) {
        return absl::ResourceExhaustedError("disk full");
      });
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace lazypull
