// `lazypull convert` end to end through the command: every input kind gives
// the same bytes, whatever --threads is; the output verifies, extracts to the
// input tree (compared with GNU tar's extraction of the input), and plain
// gzip/zstd read it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/testing/tar_builder.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

RunResult Sh(const std::string& cmd) {
  return ::lazypull::testing::Run({"/bin/sh", "-c", cmd});
}

std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  uint32_t x = 2463534242u + static_cast<uint32_t>(seed);
  for (char& c : s) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c = static_cast<char>(x);
  }
  return s;
}

std::string InputTar() {
  TarBuilder b;
  b.Dir("etc").Dir("bin", 0755).Dir("data");
  b.File("etc/hosts", "127.0.0.1 localhost\n");
  b.File("etc/empty", "");
  b.File("data/exact", Pattern(4096, 1));        // exactly one chunk
  b.File("data/plus1", Pattern(4097, 2));        // one chunk + 1 byte
  b.File("data/big", Pattern(50000, 3));         // many chunks
  b.File("data/text", std::string(30000, 'a'));  // compressible
  TarSpec suid;
  suid.name = "bin/tool";
  suid.content = "#!/bin/sh\necho tool\n";
  suid.mode = 04755;
  suid.uid = 1000;
  suid.gid = 1000;
  suid.uname = "user";
  suid.gname = "users";
  b.Add(suid);
  TarSpec frac;  // a PAX mtime with a fraction (kept, not rounded)
  frac.name = "etc/fraction";
  frac.content = "f";
  frac.pax_mtime = "1622548800.987654321";
  b.Add(frac);
  TarSpec x;
  x.name = "etc/with-xattr";
  x.content = "x";
  x.xattrs = {{"user.note", std::string("v\0\xff", 3)}};
  b.Add(x);
  b.Symlink("bin/abs", "/etc/hosts").Symlink("bin/rel", "../etc/hosts");
  b.Hardlink("bin/tool-link", "bin/tool");
  TarSpec chr;
  chr.name = "dev-null";
  chr.typeflag = '3';
  chr.dev_major = 1;
  chr.dev_minor = 3;
  chr.mode = 0666;
  b.Add(chr);
  TarSpec blk;
  blk.name = "dev-blk";
  blk.typeflag = '4';
  blk.dev_major = 259;
  blk.dev_minor = 7;
  b.Add(blk);
  TarSpec fifo;
  fifo.name = "fifo";
  fifo.typeflag = '6';
  b.Add(fifo);
  return b.Finish();
}

class ConvertCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (devices, owners)";
    dir_ = MakeTempDir("convert");
    std::ofstream(dir_ + "/in.tar", std::ios::binary) << InputTar();
    ASSERT_EQ(Sh(absl::StrCat("gzip -c ", dir_, "/in.tar > ", dir_,
                              "/in.tar.gz && zstd -q -c ", dir_, "/in.tar > ",
                              dir_, "/in.tar.zst"))
                  .exit_code,
              0);
  }

  std::string Convert(const std::string& in, const std::string& out,
                      const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {LazypullBinary(), "convert",
                                     dir_ + "/" + in,  dir_ + "/" + out,
                                     "--chunk-size",   "4096"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    RunResult r = ::lazypull::testing::Run(argv);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("\"toc_digest\""), std::string::npos) << r.out;
    return ReadFile(dir_ + "/" + out);
  }

  std::string dir_;
};

TEST_F(ConvertCliTest, EveryInputKindAndThreadCountGivesTheSameBytes) {
  for (const char* format : {"estargz", "zstd:chunked"}) {
    SCOPED_TRACE(format);
    const std::string base =
        Convert("in.tar", "a.layer", {"--format", format, "--threads", "1"});
    ASSERT_FALSE(base.empty());
    EXPECT_EQ(
        Convert("in.tar", "b.layer", {"--format", format, "--threads", "2"}),
        base);
    EXPECT_EQ(Convert("in.tar.gz", "c.layer", {"--format", format}), base);
    EXPECT_EQ(Convert("in.tar.zst", "d.layer", {"--format", format}), base);
    // Re-converting a converted layer (its TOC and landmark dropped).
    EXPECT_EQ(Convert("a.layer", "e.layer", {"--format", format}), base);
  }
}

TEST_F(ConvertCliTest, OutputVerifiesExtractsToTheInputAndPlainToolsReadIt) {
  for (const char* min_chunk : {"0", "6K"})
    for (const char* format : {"estargz", "zstd:chunked"}) {
      SCOPED_TRACE(absl::StrCat(format, ", --min-chunk-size ", min_chunk));
      const std::string out =
          absl::StrCat("out-", std::string(1, format[0]), min_chunk);
      Convert("in.tar", out,
              {"--format", format, "--min-chunk-size", min_chunk});
      RunResult v = ::lazypull::testing::Run(
          {LazypullBinary(), "verify", dir_ + "/" + out});
      EXPECT_EQ(v.exit_code, 0) << v.err;
      const std::string tool = format[0] == 'e' ? "gzip -dc" : "zstd -q -dc";
      RunResult t = Sh(absl::StrCat(tool, " < ", dir_, "/", out, " | tar -t"));
      EXPECT_EQ(t.exit_code, 0) << t.err;
      EXPECT_NE(t.out.find("data/big"), std::string::npos) << t.out;
      const std::string got = dir_ + "/x-" + out, want = dir_ + "/ref-" + out;
      RunResult x = ::lazypull::testing::Run(
          {LazypullBinary(), "extract", dir_ + "/" + out, got});
      ASSERT_EQ(x.exit_code, 0) << x.err;
      ASSERT_EQ(mkdir(want.c_str(), 0755), 0);
      RunResult r =
          Sh(absl::StrCat("tar --xattrs --xattrs-include='*' --same-owner "
                          "--numeric-owner -xpf ",
                          dir_, "/in.tar -C ", want));
      ASSERT_EQ(r.exit_code, 0) << r.err;
      TreeCompareOptions o;
      o.label = format;
      // The roots are made by the test and by extract; GNU tar creates
      // symlinks late, after it restored their directories' mtimes (our
      // directory mtimes are checked against expected.json by golden tests).
      o.skip_mtime = {"", "bin", "etc", "data"};
      CompareTrees(got, want, o);
    }
}

TEST_F(ConvertCliTest, PrioritizedFilesLeadTheLayer) {
  std::ofstream(dir_ + "/prio") << "data/plus1\n/etc/hosts\nbin/tool-link\n";
  Convert("in.tar", "p.layer", {"--prioritize", dir_ + "/prio"});
  RunResult i = ::lazypull::testing::Run(
      {LazypullBinary(), "inspect", "--json", dir_ + "/p.layer"});
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_NE(i.out.find("\"prefetch_landmark_offset\": "), std::string::npos);
  EXPECT_EQ(i.out.find("\"prefetch_landmark_offset\": null"), std::string::npos)
      << i.out.substr(0, 400);
  // In the blob, the prioritized payloads come before the others.
  RunResult t = Sh(absl::StrCat("gzip -dc < ", dir_, "/p.layer | tar -t"));
  ASSERT_EQ(t.exit_code, 0);
  const size_t landmark = t.out.find(".prefetch.landmark");
  ASSERT_NE(landmark, std::string::npos) << t.out;
  for (const char* first : {"data/plus1", "etc/hosts", "bin/tool\n"}) {
    EXPECT_LT(t.out.find(first), landmark) << first << "\n" << t.out;
  }
  EXPECT_GT(t.out.find("data/big"), landmark) << t.out;
}

// Trees that are legal but awkward convert, verify and extract: a hardlink
// whose target (a symlink) is replaced later in the tar (the link keeps what
// it was linked to, as tar extracts it: it became a link to the new one,
// listed ahead of it, a stream plain tar failed on); a file named ".wh.." (a
// whiteout of
// "..", which extract failed on); a path 2,040 directories deep, as deep as a
// path can be (4,081 bytes; extract walked every directory from the root,
// quadratic: ~2 minutes for 6,000 levels, which are now refused; linear).
TEST_F(ConvertCliTest, AwkwardTreesConvertAndExtract) {
  TarBuilder b;
  b.Dir("d");
  b.Symlink("d/s", "t1");
  b.Hardlink("d/h", "d/s");
  b.Symlink("d/s", "t2");
  b.File("d/.wh..", "not a whiteout");
  std::string deep;
  for (int i = 0; i < 2040; ++i) deep += "a/";
  b.File(deep + "f", "bottom");
  std::ofstream(dir_ + "/awkward.tar", std::ios::binary) << b.Finish();
  // The deep file and the hardlink prioritized (their parents and the
  // link's target are moved ahead with them).
  std::ofstream(dir_ + "/awkward.prio") << deep << "f\nd/h\n";
  for (const char* format : {"estargz", "zstd:chunked"}) {
    SCOPED_TRACE(format);
    const std::string out = absl::StrCat("awk-", std::string(1, format[0]));
    Convert("awkward.tar", out,
            {"--format", format, "--prioritize", dir_ + "/awkward.prio"});
    RunResult v = ::lazypull::testing::Run(
        {LazypullBinary(), "verify", dir_ + "/" + out});
    EXPECT_EQ(v.exit_code, 0) << v.err;
    RunResult i = ::lazypull::testing::Run(
        {LazypullBinary(), "inspect", "--json", dir_ + "/" + out});
    ASSERT_EQ(i.exit_code, 0) << i.err;
    EXPECT_EQ(i.out.find("\"prefetch_landmark_offset\": null"),
              std::string::npos);
    const std::string got = dir_ + "/x-" + out;
    // Removed however the test ends: Bazel's server walks a test's leftover
    // temporary files recursively and dies on a tree this deep.
    struct RemoveAtEnd {
      std::string path;
      ~RemoveAtEnd() { Sh("rm -rf " + path); }
    } remove_at_end{got};
    const absl::Time t0 = absl::Now();
    RunResult x = ::lazypull::testing::Run(
        {LazypullBinary(), "extract", dir_ + "/" + out, got});
    ASSERT_EQ(x.exit_code, 0) << x.err;
    EXPECT_LT(absl::Now() - t0, absl::Seconds(30));
    char link[64] = {0};
    ASSERT_GT(readlink((got + "/d/s").c_str(), link, sizeof(link) - 1), 0);
    EXPECT_STREQ(link, "t2");
    // h was linked to the first s: it is that symlink, the later s apart.
    ASSERT_GT(readlink((got + "/d/h").c_str(), link, sizeof(link) - 1), 0);
    EXPECT_STREQ(link, "t1");
    struct stat h, s;
    ASSERT_EQ(lstat((got + "/d/h").c_str(), &h), 0);
    ASSERT_EQ(lstat((got + "/d/s").c_str(), &s), 0);
    EXPECT_TRUE(S_ISLNK(h.st_mode));
    EXPECT_NE(h.st_ino, s.st_ino);
    if (format[0] == 'e') {
      // The blob is a gzip tar plain clients extract (GNU tar here).
      const std::string plain = dir_ + "/plain-" + out;
      struct RemoveAtEnd2 {
        std::string path;
        ~RemoveAtEnd2() { Sh("rm -rf " + path); }
      } remove_plain{plain};
      mkdir(plain.c_str(), 0755);
      // (Only d: the deep path is beyond what GNU tar opens.)
      RunResult t = Sh("tar -C " + plain + " -xzf " + dir_ + "/" + out + " d");
      EXPECT_EQ(t.exit_code, 0) << t.err;
      char plain_link[64] = {0};
      ASSERT_GT(readlink((plain + "/d/h").c_str(), plain_link,
                         sizeof(plain_link) - 1),
                0);
      EXPECT_STREQ(plain_link, "t1");
    }
    // A whiteout name that names nothing: neither made nor a failure (the
    // mount hides it too).
    EXPECT_NE(access((got + "/d/.wh..").c_str(), F_OK), 0);
    // The bottom file, reached a level at a time (its path is too long for
    // one open).
    int fd = open(got.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    for (int i = 0; i < 2040 && fd >= 0; ++i) {
      int next = openat(fd, "a", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      close(fd);
      fd = next;
    }
    ASSERT_GE(fd, 0);
    int f = openat(fd, "f", O_RDONLY | O_CLOEXEC);
    close(fd);
    ASSERT_GE(f, 0);
    char buf[16] = {0};
    EXPECT_EQ(read(f, buf, sizeof(buf)), 6);
    close(f);
    EXPECT_STREQ(buf, "bottom");
  }
}

TEST_F(ConvertCliTest, BadInputGetsAClearError) {
  std::ofstream(dir_ + "/junk") << "this is not a tar";
  RunResult r = ::lazypull::testing::Run(
      {LazypullBinary(), "convert", dir_ + "/junk", dir_ + "/junk.out"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_FALSE(r.err.empty());
  EXPECT_NE(access((dir_ + "/junk.out").c_str(), F_OK), 0)
      << "a failed convert left its output behind";
  for (const char* size : {"lots", "2G"}) {
    RunResult u =
        ::lazypull::testing::Run({LazypullBinary(), "convert", dir_ + "/in.tar",
                                  dir_ + "/u.out", "--min-chunk-size", size});
    EXPECT_NE(u.exit_code, 0) << size;
    EXPECT_NE(u.err.find("min"), std::string::npos) << u.err;
  }
  // A path longer than PATH_MAX (6,000 levels) is refused, as every reader
  // refuses it (no runtime could create it), with no output left behind.
  {
    TarBuilder b;
    std::string deep;
    for (int i = 0; i < 6000; ++i) deep += "a/";
    b.File(deep + "f", "bottom");
    std::ofstream(dir_ + "/deep.tar", std::ios::binary) << b.Finish();
    RunResult c = ::lazypull::testing::Run(
        {LazypullBinary(), "convert", dir_ + "/deep.tar", dir_ + "/deep.out"});
    EXPECT_EQ(c.exit_code, 1) << c.err;
    EXPECT_NE(c.err.find("longer than 4095 (PATH_MAX)"), std::string::npos)
        << c.err;
    EXPECT_LT(c.err.size(), 2000u);
    EXPECT_NE(access((dir_ + "/deep.out").c_str(), F_OK), 0);
  }
  // An mtime past year 9999 cannot be written in the TOC: refused, naming
  // the entry (the converter's own reader refused its output before).
  {
    TarBuilder b;
    TarSpec far;
    far.name = "far-future";
    far.content = "x";
    far.pax_mtime = "253402300800";  // 10000-01-01T00:00:00Z
    b.Add(far);
    std::ofstream(dir_ + "/far.tar", std::ios::binary) << b.Finish();
    RunResult c = ::lazypull::testing::Run(
        {LazypullBinary(), "convert", dir_ + "/far.tar", dir_ + "/far.out"});
    EXPECT_EQ(c.exit_code, 1) << c.err;
    EXPECT_NE(c.err.find("far-future"), std::string::npos) << c.err;
    EXPECT_NE(c.err.find("0-9999"), std::string::npos) << c.err;
  }
  // Names that differ only in invalid UTF-8 are one name in the TOC's
  // JSON: refused, rather than one file silently lost. A single such name
  // converts (as U+FFFD, as the reference writes it).
  for (bool twins : {true, false}) {
    TarBuilder b;
    b.File("caf\xe9", "first");
    if (twins) b.File("caf\xe8", "second");
    const std::string in = dir_ + "/latin1.tar", out = dir_ + "/latin1.out";
    std::ofstream(in, std::ios::binary) << b.Finish();
    RunResult c =
        ::lazypull::testing::Run({LazypullBinary(), "convert", in, out});
    if (twins) {
      EXPECT_EQ(c.exit_code, 1) << c.err;
      EXPECT_NE(c.err.find("same TOC name"), std::string::npos) << c.err;
      EXPECT_NE(access(out.c_str(), F_OK), 0);
    } else {
      EXPECT_EQ(c.exit_code, 0) << c.err;
    }
  }
}

}  // namespace
}  // namespace lazypull::testing
