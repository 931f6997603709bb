// Golden-layer tests of `lazypull mount` (shared/testdata/estargz, described
// in its README.md). Every case gets its own mountpoint and cache directory
// under $TEST_TMPDIR.
//
// - A valid layer mounts; its tree matches expected.json in the overlay
//   presentation (`.wh.X` as char 0:0 X, `.wh..wh..opq` hidden and its
//   directory carrying trusted.overlay.opaque=y; a root mount shows no
//   user.overlay.opaque)
//   and matches `lazypull extract` of the same layer on every field; the
//   state file /.stargz-snapshotter/<toc digest>.json is reachable by name
//   but never listed, and reports {error, digest, size, fetchedSize,
//   fetchedPercent}; writes fail with EROFS; `lazypull unmount` ends it.
// - A layer that must fail at open (or whose trusted TOC digest lies) is
//   refused with a message and leaves no mount; so is any layer mounted
//   without --toc-digest and without --insecure-skip-toc-verify.
// - A layer with one corrupt chunk mounts; reading that chunk fails with EIO,
//   every other byte of the layer reads exactly, and the state file's error
//   becomes non-empty.
//
// Needs root and /dev/fuse (tag `no-sandbox`); skips loudly otherwise.
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

// Mounted by root (these tests are): trusted.* only (user.overlay.opaque is
// for a user's rootless overlayfs).
const std::vector<std::string> kMountOpaqueXattrs = {kTrustedOpaqueXattr};

class MountGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_TESTDATA();
    LAZYPULL_SKIP_WITHOUT_FUSE();
    layer_ = LoadExpectedLayer(GetParam());
    ASSERT_TRUE(layer_.has_value());
  }

  void TearDown() override {
    EXPECT_EQ(janitor_.DetachAll(), 0) << "the test left a mount behind";
  }

  // Whether the blob opens (its trusted digest may still lie).
  bool BlobIsValid() const {
    return !layer_->failure || layer_->failure->stage != "open" ||
           layer_->actual_toc_digest.has_value();
  }
  // Whether every byte of the layer reads.
  bool ReadsFully() const {
    return BlobIsValid() &&
           (!layer_->failure || layer_->failure->stage != "read");
  }

  // Mounts the layer with its valid TOC digest; fails the test if that does
  // not work.
  void MountOk(LayerMount* m) {
    *m = MountExpected(&janitor_, *layer_);
    ASSERT_TRUE(m->ok()) << "mount failed (" << m->result.exit_code
                         << "): " << m->result.err << "\nlog:\n"
                         << m->Log();
    EXPECT_NE(m->result.out.find("mounted " + m->mountpoint), std::string::npos)
        << m->result.out;
    EXPECT_GT(m->pid, 0) << "no \"(pid N)\" in: " << m->result.out;
    ASSERT_EQ(MountCount(m->mountpoint), 1);
    EXPECT_EQ(MountType(m->mountpoint), "fuse.lazypull");
  }

  void UnmountOk(const LayerMount& m) {
    RunResult r = UnmountLayer(m.mountpoint);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(MountCount(m.mountpoint), 0) << "still mounted after unmount";
    if (m.pid > 0) {
      EXPECT_TRUE(WaitProcessGone(m.pid, std::chrono::seconds(10)))
          << "the serving process " << m.pid << " outlived its mount";
    }
  }

  // Expects every way of writing to the mount to fail with EROFS.
  void ExpectReadOnly(const std::string& mp) {
    const std::string fresh = mp + "/lazypull-test-new";
    errno = 0;
    EXPECT_EQ(open(fresh.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644), -1);
    EXPECT_EQ(errno, EROFS) << "create: " << strerror(errno);
    errno = 0;
    EXPECT_EQ(mkdir(fresh.c_str(), 0755), -1);
    EXPECT_EQ(errno, EROFS) << "mkdir: " << strerror(errno);
    errno = 0;
    EXPECT_EQ(symlink("x", fresh.c_str()), -1);
    EXPECT_EQ(errno, EROFS) << "symlink: " << strerror(errno);
    errno = 0;
    EXPECT_EQ(setxattr(mp.c_str(), "user.lazypull", "x", 1, 0), -1);
    EXPECT_EQ(errno, EROFS) << "setxattr: " << strerror(errno);
    errno = 0;
    EXPECT_EQ(chmod(mp.c_str(), 0700), -1);
    EXPECT_EQ(errno, EROFS) << "chmod: " << strerror(errno);
    for (const auto& [path, e] : layer_->overlay) {
      if (e.type != "reg") continue;
      const std::string file = mp + "/" + path;
      for (int flags : {O_WRONLY, O_RDWR, O_WRONLY | O_APPEND}) {
        errno = 0;
        int fd = open(file.c_str(), flags | O_CLOEXEC);
        EXPECT_EQ(fd, -1) << file << " opened for writing (flags " << flags
                          << ")";
        if (fd >= 0) close(fd);
        EXPECT_EQ(errno, EROFS)
            << "open " << file << " flags " << flags << ": " << strerror(errno);
      }
      errno = 0;
      EXPECT_EQ(unlink(file.c_str()), -1);
      EXPECT_EQ(errno, EROFS) << "unlink: " << strerror(errno);
      errno = 0;
      EXPECT_EQ(rename(file.c_str(), fresh.c_str()), -1);
      EXPECT_EQ(errno, EROFS) << "rename: " << strerror(errno);
      errno = 0;
      EXPECT_EQ(truncate(file.c_str(), 0), -1);
      EXPECT_EQ(errno, EROFS) << "truncate: " << strerror(errno);
      // The file is unchanged.
      FileContent c = ReadWholeFile(file);
      EXPECT_EQ(c.error, 0);
      EXPECT_EQ(c.data.size(), e.size);
      break;  // one regular file is enough
    }
  }

  bool HasContent() const {
    for (const auto& [path, e] : layer_->overlay) {
      if (e.type == "reg" && e.size > 0) return true;
    }
    return false;
  }

  MountJanitor janitor_;
  std::optional<ExpectedLayer> layer_;
};

TEST_P(MountGoldenTest, TreeMatchesExpectedAndExtract) {
  if (!ReadsFully()) GTEST_SKIP() << "must_fail case: tested below";
  LayerMount m;
  ASSERT_NO_FATAL_FAILURE(MountOk(&m));

  ExpectedCompareOptions eo;
  eo.opaque_xattrs = kMountOpaqueXattrs;
  CompareTreeWithExpected(m.mountpoint, *layer_, eo);

  Extraction x =
      ExtractLayer(layer_->blob, {"--toc-digest", layer_->ValidTocDigest()});
  ASSERT_TRUE(x.ok()) << "extract failed: " << x.result.err;
  TreeCompareOptions to;
  to.label = "case " + GetParam() + ", mount vs extract";
  to.skip_mtime = layer_->UnspecifiedMtimePaths();
  // extract marks opaque directories with the trusted.* xattr only.
  to.ignore_xattrs = {kUserOpaqueXattr};
  CompareTrees(m.mountpoint, x.root, to);

  UnmountOk(m);
}

TEST_P(MountGoldenTest, StateFile) {
  if (!BlobIsValid()) GTEST_SKIP() << "must_fail case: tested below";
  LayerMount m;
  ASSERT_NO_FATAL_FAILURE(MountOk(&m));
  const std::string& digest = layer_->ValidTocDigest();
  const std::string dir = m.mountpoint + "/.stargz-snapshotter";
  const std::string file = dir + "/" + digest + ".json";

  // Reachable by lookup, never listed in the root.
  struct stat st;
  ASSERT_EQ(stat(dir.c_str(), &st), 0) << dir << ": " << strerror(errno);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  ASSERT_EQ(stat(file.c_str(), &st), 0) << file << ": " << strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  // Its size is what a read returns: a reader never gets it cut short.
  EXPECT_EQ(static_cast<size_t>(st.st_size), ReadWholeFile(file).data.size());
  EXPECT_EQ(ListDir(m.mountpoint).count(".stargz-snapshotter"), 0u)
      << "readdir of / lists the state directory";
  errno = 0;
  EXPECT_NE(stat((dir + "/sha256:0.json").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);

  // Listing the state directory (READDIRPLUS hands the kernel attributes)
  // must not freeze the page that the next read caches.
  EXPECT_EQ(ListDir(dir).count(digest + ".json"), 1u);
  LayerState s = ReadLayerState(m.mountpoint, digest);
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.keys, (std::set<std::string>{"error", "digest", "size",
                                           "fetchedSize", "fetchedPercent"}));
  EXPECT_EQ(s.error, "");
  EXPECT_EQ(s.digest, digest);
  EXPECT_EQ(s.size, layer_->blob_size);

  // Reading everything fetches bytes; the state keeps up.
  if (ReadsFully()) {
    ExpectedCompareOptions eo;
    eo.opaque_xattrs = kMountOpaqueXattrs;
    CompareTreeWithExpected(m.mountpoint, *layer_, eo);
    s = ReadLayerState(m.mountpoint, digest);
    ASSERT_TRUE(s.ok);
    EXPECT_EQ(s.error, "");
    EXPECT_LE(s.fetched_size, s.size);
    if (HasContent()) {
      EXPECT_GT(s.fetched_size, 0u);
    }
    ASSERT_GT(s.size, 0u);
    EXPECT_NEAR(s.fetched_percent,
                100.0 * static_cast<double>(s.fetched_size) /
                    static_cast<double>(s.size),
                0.01);
  }
  UnmountOk(m);
}

TEST_P(MountGoldenTest, WritesFailWithErofs) {
  if (!BlobIsValid()) GTEST_SKIP() << "must_fail case: tested below";
  LayerMount m;
  ASSERT_NO_FATAL_FAILURE(MountOk(&m));
  ExpectReadOnly(m.mountpoint);
  UnmountOk(m);
}

TEST_P(MountGoldenTest, RefusesLayerThatFailsAtOpen) {
  if (!layer_->failure || layer_->failure->stage != "open") {
    GTEST_SKIP() << "not a must_fail-at-open case";
  }
  LayerMount m =
      MountLayer(&janitor_, layer_->blob, {"--toc-digest", layer_->toc_digest});
  EXPECT_NE(m.result.exit_code, 0) << "mounted: " << m.result.out;
  EXPECT_EQ(m.result.err.rfind("lazypull mount: ", 0), 0u)
      << "no message: " << m.result.err;
  EXPECT_GT(m.result.err.size(), std::string("lazypull mount: ").size() + 10)
      << m.result.err;
  EXPECT_EQ(m.result.out.find("mounted"), std::string::npos) << m.result.out;
  EXPECT_EQ(MountCount(m.mountpoint), 0) << "a refused layer left a mount";
  if (layer_->actual_toc_digest) {
    // The digest is the problem, and the message says which.
    EXPECT_NE(m.result.err.find(layer_->toc_digest), std::string::npos)
        << m.result.err;
  }

  // Without a digest the blob itself is judged: a broken one still fails.
  LayerMount insecure =
      MountLayer(&janitor_, layer_->blob, {"--insecure-skip-toc-verify"});
  if (layer_->actual_toc_digest) {
    ASSERT_TRUE(insecure.ok()) << insecure.result.err;
    LayerState s =
        ReadLayerState(insecure.mountpoint, *layer_->actual_toc_digest);
    EXPECT_EQ(s.digest, *layer_->actual_toc_digest);
    UnmountOk(insecure);
  } else {
    EXPECT_NE(insecure.result.exit_code, 0) << insecure.result.out;
    EXPECT_EQ(insecure.result.err.rfind("lazypull mount: ", 0), 0u)
        << insecure.result.err;
    EXPECT_EQ(MountCount(insecure.mountpoint), 0);
  }
}

TEST_P(MountGoldenTest, RefusesWithoutTrustAnchor) {
  LayerMount m = MountLayer(&janitor_, layer_->blob, {});
  EXPECT_NE(m.result.exit_code, 0) << "mounted: " << m.result.out;
  EXPECT_NE(m.result.err.find("--toc-digest"), std::string::npos)
      << m.result.err;
  EXPECT_NE(m.result.err.find("--insecure-skip-toc-verify"), std::string::npos)
      << m.result.err;
  EXPECT_EQ(MountCount(m.mountpoint), 0);
}

TEST_P(MountGoldenTest, CorruptChunkFailsOnlyThatChunk) {
  if (!layer_->failure || layer_->failure->stage != "read") {
    GTEST_SKIP() << "not a must_fail-at-read case";
  }
  const ExpectedFailure& f = *layer_->failure;
  auto entry = layer_->raw.find(f.path);
  ASSERT_NE(entry, layer_->raw.end()) << f.path;
  const std::vector<ExpectedChunk>& chunks = entry->second.chunks;
  ASSERT_GT(chunks.size(), 1u);

  LayerMount m;
  ASSERT_NO_FATAL_FAILURE(MountOk(&m));
  const std::string& digest = layer_->ValidTocDigest();
  LayerState before = ReadLayerState(m.mountpoint, digest);
  ASSERT_TRUE(before.ok);
  EXPECT_EQ(before.error, "");

  const std::string path = m.mountpoint + "/" + f.path;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
  std::string buf(f.chunk_size, '\0');
  auto expect_eio = [&](uint64_t off, size_t len, const char* what) {
    errno = 0;
    ssize_t n = pread(fd, buf.data(), len, static_cast<off_t>(off));
    EXPECT_EQ(n, -1) << what << ": read " << n << " bytes of the bad chunk";
    EXPECT_EQ(errno, EIO) << what << ": " << strerror(errno);
  };
  expect_eio(f.chunk_offset, f.chunk_size, "whole chunk");
  expect_eio(f.chunk_offset, f.chunk_size, "whole chunk again");
  expect_eio(f.chunk_offset + f.chunk_size - 1, 1, "last byte");

  LayerState after = ReadLayerState(m.mountpoint, digest);
  ASSERT_TRUE(after.ok);
  EXPECT_NE(after.error, "") << "the state file does not report the failure";
  EXPECT_NE(after.error.find(f.path), std::string::npos) << after.error;

  // Every other chunk of that file reads exactly.
  bool found = false;
  for (const ExpectedChunk& c : chunks) {
    if (c.offset == f.chunk_offset) {
      found = true;
      EXPECT_EQ(c.size, f.chunk_size);
      continue;
    }
    std::string data(c.size, '\0');
    ssize_t n = pread(fd, data.data(), c.size, static_cast<off_t>(c.offset));
    ASSERT_EQ(n, static_cast<ssize_t>(c.size))
        << f.path << " chunk at " << c.offset << ": " << strerror(errno);
    EXPECT_EQ(Sha256Of(data), c.digest) << f.path << " chunk at " << c.offset;
  }
  EXPECT_TRUE(found) << "failure.chunk_offset is not a chunk of " << f.path;
  // Neighbours being cached changes nothing.
  expect_eio(f.chunk_offset, f.chunk_size, "whole chunk after neighbours");
  close(fd);

  // Every other file reads exactly; the tree is complete.
  ExpectedCompareOptions eo;
  eo.opaque_xattrs = kMountOpaqueXattrs;
  eo.skip_content = {f.path};
  CompareTreeWithExpected(m.mountpoint, *layer_, eo);
  UnmountOk(m);
}

INSTANTIATE_TEST_SUITE_P(Estargz, MountGoldenTest,
                         ::testing::ValuesIn(EstargzCases()), CaseParamName);
// Without shared/testdata there are no cases; MountGoldenTestdata skips.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(MountGoldenTest);

TEST(MountGoldenTestdata, Present) {
  LAZYPULL_SKIP_WITHOUT_TESTDATA();
  ASSERT_FALSE(EstargzCases().empty()) << "no cases under estargz/";
}

}  // namespace
}  // namespace lazypull::testing
