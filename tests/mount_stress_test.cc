// Stress and lifecycle tests of `lazypull mount` on the golden layers
// (shared/testdata/estargz):
// - many threads read random ranges (crossing chunk boundaries, past EOF,
//   through the page cache, O_DIRECT and after evicting it) of every file of
//   the `chunked` (gzip) and `zstd` layers at once, compared byte for byte
//   with `lazypull extract`'s copy (itself checked against expected.json);
//   then again with the chunk cache warm;
// - `lazypull unmount` of a busy mount fails with a "busy" message and
//   leaves it working; --force detaches it;
// - after kill -9 of the serving process, a new mount on the same
//   mountpoint replaces the dead one;
// - SIGTERM to the serving process unmounts cleanly.
// Every test leaves no mount behind (MountJanitor detaches leftovers).
//
// Needs root and /dev/fuse (tag `no-sandbox`); skips loudly otherwise.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iostream>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

// One file to read through a mount, with its verified reference bytes.
struct Target {
  std::string label;                 // case/path
  std::string path;                  // under the mountpoint
  std::string ref;                   // the expected bytes
  std::vector<uint64_t> boundaries;  // chunk starts and the end
};

struct ReadStats {
  uint64_t reads = 0, bytes = 0, mismatches = 0;
  std::vector<std::string> first_failures;
};

// Reads `len` bytes at `off` (fewer only at EOF); -errno on failure.
ssize_t PreadFull(int fd, char* buf, size_t len, off_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, off + done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

// `threads` threads each do `iterations` random reads of `targets` at
// once. Thread t uses seed `seed + t` and an I/O style of its own: one fd
// per target through the page cache, a fresh open per read, O_DIRECT, or
// evicting the page cache (POSIX_FADV_DONTNEED) every few reads.
ReadStats RandomReads(const std::vector<Target>& targets, int threads,
                      int iterations, uint64_t seed) {
  std::mutex mu;
  ReadStats total;
  std::atomic<int> ready{0};
  auto worker = [&](int t) {
    std::mt19937_64 rng(seed + static_cast<uint64_t>(t));
    const int style = t % 4;
    const int extra = style == 2 ? O_DIRECT : 0;
    std::vector<int> fds(targets.size(), -1);
    ReadStats mine;
    auto fail = [&](const std::string& what) {
      ++mine.mismatches;
      if (mine.first_failures.size() < 5) {
        std::ostringstream s;
        s << "thread " << t << " (seed " << seed + t << ", style " << style
          << "): " << what;
        mine.first_failures.push_back(s.str());
      }
    };
    if (style != 1) {
      for (size_t i = 0; i < targets.size(); ++i) {
        fds[i] = open(targets[i].path.c_str(), O_RDONLY | O_CLOEXEC | extra);
        if (fds[i] < 0)
          fail("open " + targets[i].path + ": " + strerror(errno));
      }
    }
    // Start together.
    ready.fetch_add(1);
    while (ready.load() < threads) std::this_thread::yield();
    std::string buf;
    for (int it = 0; it < iterations; ++it) {
      const size_t ti = rng() % targets.size();
      const Target& tg = targets[ti];
      const uint64_t size = tg.ref.size();
      uint64_t off;
      switch (rng() % 4) {
        case 0:
          off = rng() % (size + 1);
          break;
        case 3:
          off = size - std::min<uint64_t>(size, rng() % 8192);
          break;
        default: {  // around a chunk boundary
          uint64_t b = tg.boundaries[rng() % tg.boundaries.size()];
          int64_t delta = static_cast<int64_t>(rng() % 8193) - 4096;
          off = static_cast<uint64_t>(std::clamp<int64_t>(
              static_cast<int64_t>(b) + delta, 0, static_cast<int64_t>(size)));
          break;
        }
      }
      static const size_t kLens[] = {1,     4095,  4096,  65535,
                                     65536, 65537, 131073};
      size_t len =
          rng() % 3 == 0 ? 1 + rng() % 400000 : kLens[rng() % std::size(kLens)];
      buf.assign(len, '\0');
      int fd = fds[ti];
      if (style == 1) {
        fd = open(tg.path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          fail("open " + tg.path + ": " + strerror(errno));
          continue;
        }
      }
      if (fd < 0) continue;  // reported at open
      ssize_t n = PreadFull(fd, buf.data(), len, static_cast<off_t>(off));
      const size_t want = static_cast<size_t>(
          std::min<uint64_t>(len, size - std::min(size, off)));
      std::ostringstream where;
      where << tg.label << " [" << off << ", +" << len << ")";
      if (n < 0) {
        fail(where.str() + ": " + strerror(static_cast<int>(-n)));
      } else if (static_cast<size_t>(n) != want) {
        fail(where.str() + ": read " + std::to_string(n) + " bytes, want " +
             std::to_string(want));
      } else if (memcmp(buf.data(), tg.ref.data() + off, want) != 0) {
        fail(where.str() + ": bytes differ from the extracted copy");
      }
      ++mine.reads;
      mine.bytes += n > 0 ? static_cast<uint64_t>(n) : 0;
      if (style == 1) close(fd);
      if (style == 3 && it % 8 == 7) {
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      }
    }
    for (int fd : fds) {
      if (fd >= 0) close(fd);
    }
    std::lock_guard<std::mutex> l(mu);
    total.reads += mine.reads;
    total.bytes += mine.bytes;
    total.mismatches += mine.mismatches;
    for (auto& s : mine.first_failures) {
      if (total.first_failures.size() < 10) total.first_failures.push_back(s);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker, t);
  for (auto& th : pool) th.join();
  return total;
}

std::string Describe(const ReadStats& s) {
  std::string out = std::to_string(s.mismatches) + " bad reads of " +
                    std::to_string(s.reads) + ":";
  for (const auto& f : s.first_failures) out += "\n  " + f;
  return out;
}

class MountStressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_TESTDATA();
    LAZYPULL_SKIP_WITHOUT_FUSE();
  }

  void TearDown() override {
    EXPECT_EQ(janitor_.DetachAll(), 0) << "the test left a mount behind";
  }

  // Loads `case_name` and mounts it; fails the test if that does not work.
  void MountCase(const std::string& case_name, ExpectedLayer* layer,
                 LayerMount* m, const std::string& mountpoint = "",
                 const std::string& cache_dir = "") {
    std::optional<ExpectedLayer> l = LoadExpectedLayer(case_name);
    ASSERT_TRUE(l.has_value());
    *layer = std::move(*l);
    *m = MountLayer(&janitor_, layer->blob,
                    {"--toc-digest", layer->ValidTocDigest()}, mountpoint,
                    cache_dir);
    ASSERT_TRUE(m->ok()) << case_name << ": mount failed: " << m->result.err
                         << "\nlog:\n"
                         << m->Log();
    ASSERT_GT(m->pid, 0) << "no \"(pid N)\" in: " << m->result.out;
    ASSERT_EQ(MountCount(m->mountpoint), 1);
  }

  void UnmountOk(const LayerMount& m) {
    RunResult r = UnmountLayer(m.mountpoint);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(MountCount(m.mountpoint), 0);
    EXPECT_TRUE(WaitProcessGone(m.pid, std::chrono::seconds(10)))
        << "serving process " << m.pid << " outlived its mount";
  }

  // Expects `path` under the mount to read as the layer says.
  void ExpectReads(const ExpectedLayer& layer, const std::string& mp,
                   const std::string& path) {
    FileContent c = ReadWholeFile(mp + "/" + path);
    EXPECT_EQ(c.error, 0) << path << ": " << strerror(c.error);
    EXPECT_EQ(Sha256Of(c.data), layer.overlay.at(path).sha256.value_or(""))
        << path;
  }

  MountJanitor janitor_;
};

TEST_F(MountStressTest, ConcurrentRandomReadsMatchExtractedCopy) {
  constexpr int kThreads = 16;
  struct Mounted {
    ExpectedLayer layer;
    LayerMount mount;
  };
  std::vector<Mounted> mounted(2);
  std::vector<Target> targets;
  const char* const kCases[] = {"chunked", "zstd"};
  for (size_t i = 0; i < 2; ++i) {
    Mounted& mc = mounted[i];
    ASSERT_NO_FATAL_FAILURE(MountCase(kCases[i], &mc.layer, &mc.mount));
    Extraction x = ExtractLayer(mc.layer.blob,
                                {"--toc-digest", mc.layer.ValidTocDigest()});
    ASSERT_TRUE(x.ok()) << "extract failed: " << x.result.err;
    for (const auto& [path, e] : mc.layer.overlay) {
      if (e.type != "reg" || e.size == 0) continue;
      Target t;
      t.label = std::string(kCases[i]) + "/" + path;
      t.path = mc.mount.mountpoint + "/" + path;
      FileContent ref = ReadWholeFile(x.root + "/" + path);
      ASSERT_EQ(ref.error, 0) << t.label;
      ASSERT_EQ(Sha256Of(ref.data), e.sha256.value_or(""))
          << "extracted copy of " << t.label;
      t.ref = std::move(ref.data);
      for (const ExpectedChunk& c : e.chunks) t.boundaries.push_back(c.offset);
      t.boundaries.push_back(e.size);
      targets.push_back(std::move(t));
    }
  }
  ASSERT_GE(targets.size(), 10u);

  ReadStats cold = RandomReads(targets, kThreads, 250, 1000);
  EXPECT_EQ(cold.reads, static_cast<uint64_t>(kThreads) * 250);
  EXPECT_EQ(cold.mismatches, 0u) << Describe(cold);
  EXPECT_GT(cold.bytes, 10u << 20) << "too little was read to mean anything";
  std::cout << "cold: " << cold.reads << " reads, " << cold.bytes
            << " bytes from " << targets.size() << " files\n";

  // Whole files, sequentially, once everything above is cached.
  for (const Target& t : targets) {
    FileContent c = ReadWholeFile(t.path);
    EXPECT_EQ(c.error, 0) << t.label;
    EXPECT_TRUE(c.data == t.ref) << t.label << " differs when read whole";
  }
  for (const Mounted& mc : mounted) {
    LayerState s =
        ReadLayerState(mc.mount.mountpoint, mc.layer.ValidTocDigest());
    EXPECT_EQ(s.error, "") << mc.layer.case_name;
    EXPECT_GT(s.fetched_size, 0u);
  }

  // Again on fresh mountpoints over the now warm chunk caches.
  for (Mounted& mc : mounted) {
    UnmountOk(mc.mount);
    const std::string cache = mc.mount.cache_dir;
    const std::string old_mp = mc.mount.mountpoint;
    ASSERT_NO_FATAL_FAILURE(
        MountCase(mc.layer.case_name, &mc.layer, &mc.mount, "", cache));
    for (Target& t : targets) {
      if (t.path.rfind(old_mp + "/", 0) == 0) {
        t.path = mc.mount.mountpoint + t.path.substr(old_mp.size());
      }
    }
  }
  ReadStats warm = RandomReads(targets, kThreads, 100, 2000);
  EXPECT_EQ(warm.mismatches, 0u) << Describe(warm);
  for (const Mounted& mc : mounted) UnmountOk(mc.mount);
}

TEST_F(MountStressTest, UnmountWhileBusy) {
  ExpectedLayer layer;
  LayerMount m;
  ASSERT_NO_FATAL_FAILURE(MountCase("chunked", &layer, &m));
  const std::string file = "big/text.txt";

  // An open file makes it busy.
  int fd = open((m.mountpoint + "/" + file).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << strerror(errno);
  RunResult r = UnmountLayer(m.mountpoint);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("busy"), std::string::npos) << r.err;
  EXPECT_EQ(MountCount(m.mountpoint), 1) << "a busy unmount unmounted";
  ExpectReads(layer, m.mountpoint, file);
  char byte;
  EXPECT_EQ(pread(fd, &byte, 1, 12345), 1) << strerror(errno);
  close(fd);

  // So does a process whose working directory is inside.
  int ready[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  const std::string dir = m.mountpoint + "/big";
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (chdir(dir.c_str()) != 0) _exit(1);
    if (write(ready[1], "x", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1) << "the child could not chdir";
  close(ready[0]);
  r = UnmountLayer(m.mountpoint);
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE(r.err.find("busy"), std::string::npos) << r.err;
  EXPECT_EQ(MountCount(m.mountpoint), 1);
  ExpectReads(layer, m.mountpoint, "small/f1.txt");
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);

  // --force detaches a busy mount at once; the open file keeps working
  // until it is closed (O_DIRECT: its reads reach the server), then the
  // serving process ends.
  fd = open((m.mountpoint + "/" + file).c_str(),
            O_RDONLY | O_CLOEXEC | O_DIRECT);
  ASSERT_GE(fd, 0) << strerror(errno);
  const auto start = std::chrono::steady_clock::now();
  r = UnmountLayer(m.mountpoint, /*force=*/true);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5))
      << "unmount --force waited for a server that cannot end yet";
  EXPECT_NE(r.out.find("detached"), std::string::npos) << r.out;
  EXPECT_EQ(MountCount(m.mountpoint), 0) << "--force did not detach";
  const std::string& ref = layer.overlay.at(file).sha256.value_or("");
  std::string all(layer.overlay.at(file).size, '\0');
  EXPECT_EQ(PreadFull(fd, all.data(), all.size(), 0),
            static_cast<ssize_t>(all.size()))
      << "the file held open across --force stopped reading";
  EXPECT_EQ(Sha256Of(all), ref);
  EXPECT_FALSE(ProcessGone(m.pid)) << "the server of an open file ended";
  close(fd);
  EXPECT_TRUE(WaitProcessGone(m.pid, std::chrono::seconds(15)))
      << "serving process " << m.pid << " outlived its detached mount";
  struct stat st;
  EXPECT_EQ(stat(m.mountpoint.c_str(), &st), 0) << strerror(errno);
}

TEST_F(MountStressTest, KillNineThenRemountOnSameMountpoint) {
  ExpectedLayer layer;
  LayerMount m;
  ASSERT_NO_FATAL_FAILURE(MountCase("chunked", &layer, &m));
  ExpectReads(layer, m.mountpoint, "small/f0.txt");

  ASSERT_EQ(kill(m.pid, SIGKILL), 0) << strerror(errno);
  ASSERT_TRUE(WaitProcessGone(m.pid, std::chrono::seconds(10)));
  // The dead mount stays (stat may still answer from cached attributes;
  // anything reaching the server fails).
  struct statfs sfs;
  errno = 0;
  EXPECT_NE(statfs(m.mountpoint.c_str(), &sfs), 0);
  // ENOTCONN, or ECONNABORTED once fusectl has aborted the connection.
  EXPECT_TRUE(errno == ENOTCONN || errno == ECONNABORTED) << strerror(errno);
  errno = 0;
  DIR* d = opendir(m.mountpoint.c_str());
  EXPECT_EQ(d, nullptr);
  EXPECT_TRUE(errno == ENOTCONN || errno == ECONNABORTED) << strerror(errno);
  if (d != nullptr) closedir(d);
  EXPECT_EQ(MountCount(m.mountpoint), 1) << "expected a dead mount";

  LayerMount again;
  ASSERT_NO_FATAL_FAILURE(
      MountCase("chunked", &layer, &again, m.mountpoint, m.cache_dir));
  EXPECT_EQ(MountCount(m.mountpoint), 1) << "the dead mount is still there";
  EXPECT_NE(again.Log().find("dead FUSE mount"), std::string::npos)
      << "no log line about the dead mount:\n"
      << again.Log();
  ExpectedCompareOptions eo;
  eo.opaque_xattrs = {kTrustedOpaqueXattr};  // a root mount: trusted.* only
  CompareTreeWithExpected(again.mountpoint, layer, eo);
  UnmountOk(again);
}

TEST_F(MountStressTest, SigtermUnmountsCleanly) {
  ExpectedLayer layer;
  LayerMount m;
  ASSERT_NO_FATAL_FAILURE(MountCase("zstd", &layer, &m));
  ExpectReads(layer, m.mountpoint, "big/64k-plus-1.bin");

  ASSERT_EQ(kill(m.pid, SIGTERM), 0) << strerror(errno);
  EXPECT_TRUE(WaitProcessGone(m.pid, std::chrono::seconds(10)))
      << "SIGTERM did not end the serving process";
  EXPECT_EQ(MountCount(m.mountpoint), 0) << "SIGTERM left the mount behind";
  struct stat st;
  EXPECT_EQ(stat(m.mountpoint.c_str(), &st), 0) << strerror(errno);
  EXPECT_TRUE(ListDir(m.mountpoint).empty()) << "not the bare mountpoint";
  EXPECT_NE(m.Log().find("unmounted"), std::string::npos) << m.Log();
}

}  // namespace
}  // namespace lazypull::testing
