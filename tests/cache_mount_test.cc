// The chunk cache seen through real mounts: persistence across restarts,
// content addressing across layers and processes, crash safety.
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/digest.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"

namespace lazypull::testing {
namespace {

RunResult Exec(const std::vector<std::string>& argv) {
  return ::lazypull::testing::Run(argv);
}

struct Mounted {
  std::string mountpoint;
  int pid = 0;
};

class CacheMountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_TESTDATA();
    base_ = MakeTempDir("cachemount");
  }
  void TearDown() override {
    for (const std::string& m : mounts_) umount2(m.c_str(), MNT_DETACH);
  }

  std::string Blob(const std::string& c) {
    std::string dir = *TestdataDir() + "/estargz/" + c;
    for (const char* n : {"/layer.esgz", "/layer.zstdchunked"}) {
      if (access((dir + n).c_str(), R_OK) == 0) return dir + n;
    }
    return "";
  }

  Mounted Mount(const std::string& c, const std::string& cache,
                const std::vector<std::string>& extra = {}) {
    std::string mp = MakeTempDir("mnt");
    std::vector<std::string> argv = {LazypullBinary(),
                                     "mount",
                                     "--blob",
                                     Blob(c),
                                     "--insecure-skip-toc-verify",
                                     mp,
                                     "--cache-dir",
                                     cache};
    argv.insert(argv.end(), extra.begin(), extra.end());
    RunResult r = Exec(argv);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    mounts_.push_back(mp);
    Mounted m{mp, 0};
    size_t p = r.out.find("(pid ");
    if (p != std::string::npos) m.pid = std::atoi(r.out.c_str() + p + 5);
    return m;
  }

  void Unmount(const Mounted& m) {
    RunResult r = Exec({LazypullBinary(), "unmount", m.mountpoint});
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }

  // sha256 of every regular file under `root` (relative path -> digest).
  std::map<std::string, std::string> HashTree(const std::string& root) {
    std::map<std::string, std::string> out;
    RunResult r = Exec({"/usr/bin/find", root, "-type", "f"});
    std::istringstream in(r.out);
    std::string path;
    while (std::getline(in, path)) {
      if (path.find("/.stargz-snapshotter/") != std::string::npos) continue;
      out[path.substr(root.size())] = Sha256::Of(ReadFile(path)).ToString();
    }
    return out;
  }

  // The state file's fetchedSize.
  uint64_t Fetched(const Mounted& m) {
    RunResult r = Exec({"/usr/bin/find", m.mountpoint + "/.stargz-snapshotter",
                        "-name", "*.json"});
    std::string path = r.out.substr(0, r.out.find('\n'));
    std::string json = ReadFile(path);
    size_t p = json.find("\"fetchedSize\":");
    EXPECT_NE(p, std::string::npos) << json;
    return std::strtoull(json.c_str() + p + 14, nullptr, 10);
  }

  // Chunks stored, as `lazypull cache du` counts them.
  size_t CacheChunks(const std::string& cache) {
    RunResult du =
        Exec({LazypullBinary(), "cache", "du", "--cache-dir", cache});
    EXPECT_EQ(du.exit_code, 0) << du.out;
    size_t p = du.out.find(": ");
    EXPECT_NE(p, std::string::npos) << du.out;
    return p == std::string::npos ? 0
                                  : static_cast<size_t>(std::strtoull(
                                        du.out.c_str() + p + 2, nullptr, 10));
  }

  std::string base_;
  std::vector<std::string> mounts_;
};

TEST_F(CacheMountTest, RestartReadsNothingFromTheSource) {
  const std::string cache = base_ + "/cache";
  Mounted a = Mount("chunked", cache);
  auto first = HashTree(a.mountpoint);
  EXPECT_GT(Fetched(a), 0u);
  Unmount(a);
  Mounted b = Mount("chunked", cache);
  auto second = HashTree(b.mountpoint);
  EXPECT_EQ(first, second);
  EXPECT_EQ(Fetched(b), 0u) << "a warm restart fetched chunk data";
  Unmount(b);
}

TEST_F(CacheMountTest, LayersWithCommonChunksShareTheCache) {
  // `chunked`, `levels` (same files at gzip level 1) and `zstd` (the same
  // files as zstd:chunked) hold the same chunks: stored once, fetched once.
  const std::string cache = base_ + "/cache";
  Mounted a = Mount("chunked", cache);
  auto tree = HashTree(a.mountpoint);
  Unmount(a);
  const size_t stored = CacheChunks(cache);
  EXPECT_GT(stored, 0u);
  for (const char* other : {"levels", "zstd"}) {
    Mounted m = Mount(other, cache);
    EXPECT_EQ(HashTree(m.mountpoint), tree);
    EXPECT_EQ(Fetched(m), 0u) << other << " refetched chunks in the cache";
    Unmount(m);
  }
  EXPECT_EQ(CacheChunks(cache), stored);
}

TEST_F(CacheMountTest, TwoProcessesShareOneCacheConcurrently) {
  const std::string cache = base_ + "/cache";
  Mounted a = Mount("chunked", cache);
  Mounted b = Mount("levels", cache);
  std::map<std::string, std::string> ta, tb;
  std::thread t1([&] { ta = HashTree(a.mountpoint); });
  std::thread t2([&] { tb = HashTree(b.mountpoint); });
  t1.join();
  t2.join();
  EXPECT_EQ(ta, tb);
  EXPECT_FALSE(ta.empty());
  Unmount(a);
  Unmount(b);
  // One copy of each distinct chunk however the race went.
  RunResult v =
      Exec({LazypullBinary(), "cache", "verify", "--cache-dir", cache});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  Mounted c = Mount("chunked", cache);
  EXPECT_EQ(HashTree(c.mountpoint), ta);
  EXPECT_EQ(Fetched(c), 0u);
  Unmount(c);
}

TEST_F(CacheMountTest, TinyBudgetStillServesExactBytes) {
  const std::string cache = base_ + "/cache";
  Mounted a = Mount("chunked", cache, {"--cache-size", "200K"});
  RunResult ex = Exec({LazypullBinary(), "extract", Blob("chunked"),
                       base_ + "/ref", "--no-same-owner"});
  ASSERT_EQ(ex.exit_code, 0) << ex.err;
  auto want = HashTree(base_ + "/ref");
  std::vector<std::thread> ts;
  std::vector<std::map<std::string, std::string>> got(6);
  for (int i = 0; i < 6; ++i) {
    ts.emplace_back([&, i] { got[i] = HashTree(a.mountpoint); });
  }
  for (auto& t : ts) t.join();
  for (const auto& g : got) EXPECT_EQ(g, want);
  Unmount(a);
  RunResult du = Exec({LazypullBinary(), "cache", "du", "--cache-dir", cache});
  ASSERT_EQ(du.exit_code, 0);
  size_t p = du.out.find(" chunks, ");
  ASSERT_NE(p, std::string::npos) << du.out;
  uint64_t bytes = std::strtoull(du.out.c_str() + p + 9, nullptr, 10);
  EXPECT_LE(bytes, 200u * 1024) << du.out;
  // A mistyped --cache-dir is an error, and no cache is made there.
  const std::string typo = base_ + "/no-such-cache";
  RunResult none = Exec({LazypullBinary(), "cache", "du", "--cache-dir", typo});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.err.find("no cache at"), std::string::npos) << none.err;
  EXPECT_NE(access(typo.c_str(), F_OK), 0) << "cache du made " << typo;
}

TEST_F(CacheMountTest, KillDuringFillsNeverServesTornChunks) {
  const std::string cache = base_ + "/cache";
  RunResult ex = Exec({LazypullBinary(), "extract", Blob("chunked"),
                       base_ + "/ref", "--no-same-owner"});
  ASSERT_EQ(ex.exit_code, 0) << ex.err;
  auto want = HashTree(base_ + "/ref");
  for (int round = 0; round < 3; ++round) {
    Mounted a = Mount("chunked", cache);
    ASSERT_GT(a.pid, 0);
    std::thread reader([&] { HashTree(a.mountpoint); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20 + 30 * round));
    kill(a.pid, SIGKILL);
    reader.join();
    umount2(a.mountpoint.c_str(), MNT_DETACH);
  }
  // Hand-corrupt one cached chunk (the first of a pack), then restart:
  // verify finds it, and the mount serves exact bytes either way.
  // (A pack whose index holds a record: its first is at offset 0.)
  RunResult files = Exec({"/usr/bin/find", cache + "/cache/packs", "-name",
                          "*.idx", "-size", "+47c"});
  std::string victim = files.out.substr(0, files.out.find('\n'));
  EXPECT_FALSE(victim.empty()) << "three mounts filled no pack";
  if (!victim.empty()) victim = victim.substr(0, victim.size() - 4) + ".pack";
  if (!victim.empty()) {
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f.put('\0');
    f.put('\1');
  }
  RunResult v =
      Exec({LazypullBinary(), "cache", "verify", "--cache-dir", cache});
  if (!victim.empty()) {
    EXPECT_EQ(v.exit_code, 1) << v.out;
    EXPECT_NE(v.out.find("removed 1 corrupt"), std::string::npos) << v.out;
  }
  Mounted b = Mount("chunked", cache);
  EXPECT_EQ(HashTree(b.mountpoint), want);
  Unmount(b);
  RunResult v2 =
      Exec({LazypullBinary(), "cache", "verify", "--cache-dir", cache});
  EXPECT_EQ(v2.exit_code, 0) << v2.out;
}

}  // namespace
}  // namespace lazypull::testing
