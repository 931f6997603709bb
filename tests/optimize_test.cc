// `lazypull optimize` end to end: an OCI layout whose two layers hold a
// shell (with its libraries) and some data files; the workload reads two
// of the data files; the result must list exactly those (in the order read)
// before `.prefetch.landmark` in the data layer, and the binaries it ran in
// the other.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "fetch/image_store.h"
#include "fetch/manifest.h"
#include "fetch/testing/oci_image.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull {
namespace {

using ::lazypull::testing::LazypullBinary;
using ::lazypull::testing::MakeTempDir;
using ::lazypull::testing::ReadFile;

using ::lazypull::testing::RunResult;

// Copies host file `path` to the same path under `root` (parents made).
void CopyIn(const std::string& root, const std::string& path,
            const std::string& as = "") {
  const std::string dst = root + (as.empty() ? path : as);
  RunResult r =
      testing::Run({"/usr/bin/install", "-D", "-m", "0755", path, dst});
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

// The shared libraries `ldd` names for a binary.
std::vector<std::string> Libraries(const std::string& binary) {
  RunResult r = testing::Run({"/usr/bin/ldd", binary});
  std::vector<std::string> libs;
  for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    size_t arrow = line.find("=> ");
    absl::string_view path =
        arrow == absl::string_view::npos ? line : line.substr(arrow + 3);
    path = path.substr(0, path.find(' '));
    if (absl::StartsWith(path, "/")) libs.emplace_back(path);
  }
  return libs;
}

std::string Tar(const std::string& dir, const std::string& out) {
  RunResult r =
      testing::Run({"/usr/bin/tar", "-C", dir, "--sort=name", "-cf", out, "."});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return ReadFile(out);
}

// Member names of a compressed layer, in order.
std::vector<std::string> TarOrder(const std::string& blob) {
  RunResult r = testing::Run(
      {"/bin/sh", "-c", absl::StrCat("gzip -dc '", blob, "' | tar -t")});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> names;
  for (absl::string_view l : absl::StrSplit(r.out, '\n', absl::SkipEmpty())) {
    names.emplace_back(absl::StripPrefix(l, "./"));
  }
  return names;
}

size_t IndexOf(const std::vector<std::string>& v, const std::string& s) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == s) return i;
  }
  return v.size();
}

class OptimizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "optimize needs root";
    dir_ = MakeTempDir("optimize");
    // Layer 0: /bin/sh and cat with their libraries; layer 1: data.
    const std::string bin = dir_ + "/bin-root", data = dir_ + "/data-root";
    CopyIn(bin, "/usr/bin/dash", "/usr/bin/sh");
    CopyIn(bin, "/usr/bin/cat");
    std::set<std::string> libs;
    for (const char* b : {"/usr/bin/dash", "/usr/bin/cat"}) {
      for (const std::string& l : Libraries(b)) libs.insert(l);
    }
    ASSERT_FALSE(libs.empty());
    for (const std::string& l : libs) CopyIn(bin, l);
    for (const char* l : {"bin", "lib", "lib64"}) {
      const std::string link = absl::StrCat(bin, "/", l);
      // (EEXIST: the libraries copied in made it a directory already.)
      ASSERT_TRUE(symlink(absl::StrCat("usr/", l).c_str(), link.c_str()) == 0 ||
                  errno == EEXIST)
          << link << ": " << strerror(errno);
    }
    mkdir((data + "").c_str(), 0755);
    mkdir((data + "/data").c_str(), 0755);
    for (const char* f : {"a", "b", "c"}) {
      std::ofstream(absl::StrCat(data, "/data/", f))
          << std::string(300000, f[0]);
    }
    // A name no line-per-path record could hold raw.
    std::ofstream(data + "/data/tab\tand\nnewline") << "t";
    auto layout = testing::OciLayout::Create(dir_ + "/src");
    ASSERT_TRUE(layout.ok()) << layout.status();
    auto img = layout->AddImage(
        {Tar(bin, dir_ + "/bin.tar"), Tar(data, dir_ + "/data.tar")});
    ASSERT_TRUE(img.ok()) << img.status();
    ASSERT_TRUE(layout->Tag("v1", img->manifest).ok());
    // The same content as a two-platform index (arm64 cannot run here).
    auto arm = layout->AddImage(
        {ReadFile(dir_ + "/bin.tar"), ReadFile(dir_ + "/data.tar")},
        "linux/arm64");
    ASSERT_TRUE(arm.ok()) << arm.status();
    testing::TestDescriptor amd = img->manifest, a64 = arm->manifest;
    amd.platform = "linux/amd64";
    a64.platform = "linux/arm64";
    auto index = layout->AddIndex({amd, a64});
    ASSERT_TRUE(index.ok()) << index.status();
    ASSERT_TRUE(layout->Tag("multi", *index).ok());
    // One layer holding everything, for layer:FILE.
    RunResult r = testing::Run(
        {"/bin/sh", "-c", absl::StrCat("cp -a ", data, "/data ", bin, "/")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    Tar(bin, dir_ + "/all.tar");
  }

  std::string dir_;
};

TEST_F(OptimizeTest, RecordsTheWorkloadAndPrioritizesItPerLayer) {
  const std::string record = dir_ + "/record.txt";
  RunResult r = testing::Run(
      {LazypullBinary(), "optimize", "oci:" + dir_ + "/src:v1",
       "oci:" + dir_ + "/out:opt", "--workload",
       "cat /data/b /data/a /data/tab* > /dev/null", "--record", record});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"recorded\""), std::string::npos) << r.out;

  // The record: the shell and cat from layer 0, then b and a from layer 1.
  std::vector<std::string> lines =
      absl::StrSplit(ReadFile(record), '\n', absl::SkipEmpty());
  EXPECT_LT(IndexOf(lines, "0\tusr/bin/sh"), lines.size()) << ReadFile(record);
  EXPECT_LT(IndexOf(lines, "0\tusr/bin/cat"), lines.size());
  const size_t b = IndexOf(lines, "1\tdata/b"), a = IndexOf(lines, "1\tdata/a");
  EXPECT_LT(b, a);
  EXPECT_LT(a, lines.size());
  EXPECT_EQ(IndexOf(lines, "1\tdata/c"), lines.size());
  // Paths are C-escaped: a tab or newline in a name cannot split a line.
  EXPECT_GT(IndexOf(lines, "1\tdata/tab\\tand\\nnewline"), a)
      << ReadFile(record);
  EXPECT_LT(IndexOf(lines, "1\tdata/tab\\tand\\nnewline"), lines.size());

  // The written image: the same order before the landmark in each layer.
  RegistryOptions none;
  auto loc = ImageLocation::Parse("oci:" + dir_ + "/out:opt");
  ASSERT_TRUE(loc.ok());
  auto reader = OpenImageReader(*loc, none);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto root = (*reader)->Root();
  ASSERT_TRUE(root.ok()) << root.status();
  auto man = ParseImageManifest(root->bytes);
  ASSERT_TRUE(man.ok()) << man.status();
  ASSERT_EQ(man->layers.size(), 2u);
  for (const Descriptor& l : man->layers) {
    EXPECT_EQ(l.annotations.count("containerd.io/snapshot/stargz/toc.digest"),
              1u);
  }
  auto blob = [&](int i) {
    return absl::StrCat(dir_, "/out/blobs/sha256/",
                        man->layers[i].digest.Hex());
  };
  std::vector<std::string> t0 = TarOrder(blob(0));
  const size_t lm0 = IndexOf(t0, ".prefetch.landmark");
  ASSERT_LT(lm0, t0.size());
  EXPECT_LT(IndexOf(t0, "usr/bin/sh"), lm0);
  EXPECT_LT(IndexOf(t0, "usr/bin/cat"), lm0);
  std::vector<std::string> t1 = TarOrder(blob(1));
  const size_t lm1 = IndexOf(t1, ".prefetch.landmark");
  ASSERT_LT(lm1, t1.size());
  EXPECT_LT(IndexOf(t1, "data/b"), IndexOf(t1, "data/a"));
  EXPECT_LT(IndexOf(t1, "data/a"), lm1);
  EXPECT_GT(IndexOf(t1, "data/c"), lm1);
  EXPECT_LT(IndexOf(t1, "data/c"), t1.size());

  // Nothing left mounted or behind in the scratch space.
  RunResult m =
      testing::Run({"/bin/sh", "-c", "grep lazypull-optimize /proc/mounts"});
  EXPECT_EQ(m.out, "");
}

TEST_F(OptimizeTest, SingleLayerFileAndAWorkloadThatFails) {
  const std::string out = dir_ + "/opt.layer";
  // Started under a soft open-file limit of 1000: lazypull raises its own,
  // the workload gets 1000 back (it prints it to lazypull's stderr).
  RunResult r =
      testing::Run({"/bin/sh", "-c", "ulimit -Sn 1000 && exec \"$0\" \"$@\"",
                    LazypullBinary(), "optimize", "layer:" + dir_ + "/all.tar",
                    "layer:" + out, "--workload",
                    "cat /data/c; echo \"nofile=$(ulimit -Sn)\"; exit 3",
                    "--format", "estargz"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"exit_code\": 3"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("nofile=1000\n"), std::string::npos) << r.err;
  std::vector<std::string> t = TarOrder(out);
  const size_t lm = IndexOf(t, ".prefetch.landmark");
  ASSERT_LT(lm, t.size());
  EXPECT_LT(IndexOf(t, "data/c"), lm);
  EXPECT_GT(IndexOf(t, "data/a"), lm);
  RunResult v = testing::Run({LazypullBinary(), "verify", out});
  EXPECT_EQ(v.exit_code, 0) << v.err;
}

TEST_F(OptimizeTest, PeriodStopsARunawayWorkload) {
  const std::string out = dir_ + "/p.layer";
  RunResult r = testing::Run(
      {LazypullBinary(), "optimize", "layer:" + dir_ + "/all.tar",
       "layer:" + out, "--workload",
       "cat /data/a; while :; do :; done; cat /data/b", "--period", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"timed_out\": true"), std::string::npos) << r.out;
  std::vector<std::string> t = TarOrder(out);
  const size_t lm = IndexOf(t, ".prefetch.landmark");
  EXPECT_LT(IndexOf(t, "data/a"), lm);
  EXPECT_GT(IndexOf(t, "data/b"), lm);
}

// A termination signal while the workload runs (a user's Ctrl-C, a
// runtime's timeout) kills the workload and leaves no mount, process or
// scratch directory behind (the mounts stayed, served by nobody).
TEST_F(OptimizeTest, ASignalCleansUpMountsAndTheWorkload) {
  const std::string scratch = MakeTempDir("scratch");
  const std::string out = dir_ + "/s.layer";
  const std::vector<std::string> argv = {
      LazypullBinary(), "optimize",   "layer:" + dir_ + "/all.tar",
      "layer:" + out,   "--workload", "cat /data/a; while :; do :; done",
      "--period",       "60"};
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const std::string tmpdir = "TMPDIR=" + scratch;
  std::vector<char*> env = {const_cast<char*>(tmpdir.c_str()), nullptr};
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execve(args[0], args.data(), env.data());
    _exit(127);
  }
  auto mounted = [&] {
    return ReadFile("/proc/self/mountinfo")
               .find(scratch + "/lazypull-optimize") != std::string::npos;
  };
  for (int i = 0; i < 300 && !mounted(); ++i) usleep(50 * 1000);
  ASSERT_TRUE(mounted()) << "optimize never mounted its root";
  usleep(700 * 1000);  // the workload is under way
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  int status = 0;
  pid_t w = 0;
  for (int i = 0; i < 300 && (w = waitpid(pid, &status, WNOHANG)) == 0; ++i) {
    usleep(50 * 1000);
  }
  if (w == 0) kill(pid, SIGKILL), waitpid(pid, &status, 0);
  ASSERT_EQ(w, pid) << "optimize did not end within 15 s of SIGTERM";
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
  EXPECT_FALSE(mounted()) << ReadFile("/proc/self/mountinfo");
  RunResult ls = testing::Run({"/bin/ls", "-A", scratch});
  EXPECT_EQ(ls.out, "") << "the scratch dir was left behind";
  // The busy workload is gone (nothing else here runs this loop).
  RunResult ps =
      testing::Run({"/bin/sh", "-c",
                    "grep -l 'while :; do :; [d]one' /proc/[0-9]*/cmdline"});
  EXPECT_EQ(ps.out, "") << "the workload still runs";
}

TEST_F(OptimizeTest, ImageConvertWithAWorkloadOptimizesThisPlatformOnly) {
  testing::RunResult r = testing::Run(
      {LazypullBinary(), "image", "convert", "oci:" + dir_ + "/src:multi",
       "oci:" + dir_ + "/conv:multi", "--workload", "cat /data/b"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("linux/arm64: converted without optimization"),
            std::string::npos)
      << r.err;
  RegistryOptions none;
  auto reader = OpenImageReader(
      *ImageLocation::Parse("oci:" + dir_ + "/conv:multi"), none);
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto root = (*reader)->Root();
  ASSERT_TRUE(root.ok()) << root.status();
  auto index = ParseImageIndex(root->bytes);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->manifests.size(), 2u);
  for (const Descriptor& d : index->manifests) {
    ASSERT_TRUE(d.platform.has_value());
    auto m = (*reader)->Manifest(d);
    ASSERT_TRUE(m.ok()) << m.status();
    auto man = ParseImageManifest(m->bytes);
    ASSERT_TRUE(man.ok());
    ASSERT_EQ(man->layers.size(), 2u);
    std::vector<std::string> t = TarOrder(
        absl::StrCat(dir_, "/conv/blobs/sha256/", man->layers[1].digest.Hex()));
    if (d.platform->architecture == "amd64") {
      const size_t lm = IndexOf(t, ".prefetch.landmark");
      ASSERT_LT(lm, t.size());
      EXPECT_LT(IndexOf(t, "data/b"), lm);
      EXPECT_GT(IndexOf(t, "data/a"), lm);
    } else {
      EXPECT_EQ(IndexOf(t, ".prefetch.landmark"), t.size());
      EXPECT_LT(IndexOf(t, ".no.prefetch.landmark"), t.size());
    }
  }
}

TEST_F(OptimizeTest, UsageErrors) {
  RunResult r =
      testing::Run({LazypullBinary(), "optimize", "oci:" + dir_ + "/src:v1",
                    "oci:" + dir_ + "/out2:x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--workload"), std::string::npos) << r.err;
  r = testing::Run({LazypullBinary(), "optimize", "layer:" + dir_ + "/all.tar",
                    "oci:" + dir_ + "/out2:x", "--workload", "true"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("layer:FILE"), std::string::npos) << r.err;
  r = testing::Run({LazypullBinary(), "optimize",
                    "oci:" + dir_ + "/src:nosuchtag", "oci:" + dir_ + "/out2:x",
                    "--workload", "true"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("nosuchtag"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace lazypull
