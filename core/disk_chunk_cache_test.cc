#include "core/disk_chunk_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "core/block_io.h"
#include "core/digest.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

std::string TempDir() {
  const char* base = getenv("TEST_TMPDIR");
  std::string t = std::string(base ? base : "/tmp") + "/cacheXXXXXX";
  std::vector<char> buf(t.begin(), t.end());
  buf.push_back('\0');
  EXPECT_NE(mkdtemp(buf.data()), nullptr);
  return buf.data();
}

std::string Chunk(int seed, size_t size) {
  std::mt19937 rng(seed);
  std::string s(size, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

// Stores chunks Chunk(seed, size(seed)) for seed in [first, first + n) in a
// cache at `dir` (closed again: on disk) and returns them.
std::vector<std::string> StoreChunks(const std::string& dir, int first, int n,
                                     const std::function<size_t(int)>& size,
                                     const DiskChunkCacheOptions& o = {}) {
  std::vector<std::string> chunks;
  auto c = DiskChunkCache::Open(dir, o);
  EXPECT_TRUE(c.ok());
  if (!c.ok()) return chunks;
  for (int i = first; i < first + n; ++i) {
    chunks.push_back(Chunk(i, size(i)));
    EXPECT_TRUE((*c)->Insert(Sha256::Of(chunks.back()), chunks.back()).ok());
  }
  return chunks;
}

// What the read path does with chunk `s`: reads it, or inserts it on a
// miss. Counts a hit, and a wrong answer (an error, or bytes not `s`).
void ReadOrInsert(DiskChunkCache& c, const std::string& s,
                  std::atomic<int>* hits, std::atomic<int>* wrong) {
  const Digest d = Sha256::Of(s);
  std::string out(s.size(), '\0');
  auto hit = c.Read(d, s.size(), 0, absl::MakeSpan(out));
  if (!hit.ok()) {
    ++*wrong;
  } else if (*hit) {
    ++*hits;
    if (out != s) ++*wrong;
  } else {
    (void)c.Insert(d, s);
  }
}

// Bytes of the chunk files and packs under a cache dir.
uint64_t DiskBytes(const std::string& dir) {
  uint64_t n = 0;
  std::string cmd = "find '" + dir + "/chunks' '" + dir +
                    "/packs' -type f ! -name '*.idx' -printf '%s\\n'";
  FILE* p = popen(cmd.c_str(), "r");
  if (p != nullptr) {
    unsigned long long v;
    while (fscanf(p, "%llu", &v) == 1) n += v;
    pclose(p);
  }
  return n;
}

size_t CountFiles(const std::string& dir) {
  size_t n = 0;
  std::string cmd = "find '" + dir + "' -type f | wc -l";
  FILE* p = popen(cmd.c_str(), "r");
  if (p != nullptr) {
    if (fscanf(p, "%zu", &n) != 1) n = 0;
    pclose(p);
  }
  return n;
}

// The name of the pack a cache wrote (there is one).
std::string OnlyPack(const std::string& dir) {
  std::string cmd = "ls '" + dir + "/packs' | grep '[.]pack$'";
  std::string name;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return name;
  char line[256];
  if (fgets(line, sizeof(line), p) != nullptr) name = line;
  pclose(p);
  while (!name.empty() && name.back() == '\n') name.pop_back();
  return dir + "/packs/" + name;
}

// Files of their own (one per chunk) or packs: the tests below hold for both.
class LayoutTest : public ::testing::TestWithParam<bool> {
 protected:
  bool packed() const { return GetParam(); }
  DiskChunkCacheOptions Options() const {
    DiskChunkCacheOptions o;
    if (!packed()) o.pack_max_chunk = 0;
    return o;
  }
  // Files holding chunks: chunk files, or packs.
  size_t StoredFiles(const std::string& dir) const {
    if (!packed()) return CountFiles(dir + "/chunks");
    return CountFiles(dir + "/packs") / 2;  // a .pack and its .idx
  }
};

INSTANTIATE_TEST_SUITE_P(Layouts, LayoutTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Packed" : "Files";
                         });

TEST_P(LayoutTest, StoresOnceAndReadsBack) {
  std::string dir = TempDir();
  auto c = DiskChunkCache::Open(dir, Options());
  ASSERT_TRUE(c.ok()) << c.status();
  std::string a = Chunk(1, 100000);
  Digest d = Sha256::Of(a);
  ASSERT_TRUE((*c)->Insert(d, a).ok());
  ASSERT_TRUE((*c)->Insert(d, a).ok());  // the same chunk again: deduplicated
  (*c)->Flush();
  EXPECT_EQ(StoredFiles(dir), 1u);
  EXPECT_EQ(CountFiles(dir + (packed() ? "/chunks" : "/packs")), 0u);
  EXPECT_EQ((*c)->Usage().chunks, 1u);
  EXPECT_EQ((*c)->counters().inserts, 1u);
  std::string out(1000, '\0');
  auto hit = (*c)->Read(d, a.size(), 5000, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok());
  EXPECT_TRUE(*hit);
  EXPECT_EQ(out, a.substr(5000, 1000));
  // A read with the wrong size is not this chunk: a miss, and dropped.
  auto wrong = (*c)->Read(d, a.size() + 1, 0, absl::MakeSpan(out));
  ASSERT_TRUE(wrong.ok());
  EXPECT_FALSE(*wrong);
}

TEST_P(LayoutTest, TheWriterGathersABurstAndAFlushEndsTheWait) {
  std::string dir = TempDir();
  DiskChunkCacheOptions o = Options();
  o.write_linger = absl::Seconds(30);  // far longer than the test
  o.linger_bytes = 300000;
  auto c = DiskChunkCache::Open(dir, o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::string> chunks;
  for (int i = 0; i < 4; ++i) chunks.push_back(Chunk(10 + i, 100000));
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE((*c)->Insert(Sha256::Of(chunks[i]), chunks[i]).ok());
  }
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ((*c)->counters().inserts, 0u) << "200 kB: the writer waits";
  std::string out(100, '\0');
  auto hit = (*c)->Read(Sha256::Of(chunks[1]), 100000, 50, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok());
  EXPECT_TRUE(*hit) << "a queued chunk is served from memory";
  EXPECT_EQ(out, chunks[1].substr(50, 100));
  ASSERT_TRUE((*c)->Insert(Sha256::Of(chunks[2]), chunks[2]).ok());
  const absl::Time t0 = absl::Now();
  while ((*c)->counters().inserts < 3 && absl::Now() - t0 < absl::Seconds(10)) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ((*c)->counters().inserts, 3u)
      << "300 kB gathered: written at once, as one batch";
  ASSERT_TRUE((*c)->Insert(Sha256::Of(chunks[3]), chunks[3]).ok());
  const absl::Time t1 = absl::Now();
  (*c)->Flush();
  EXPECT_LT(absl::Now() - t1, absl::Seconds(10)) << "Flush ends the wait";
  EXPECT_EQ((*c)->counters().inserts, 4u);
  EXPECT_EQ(StoredFiles(dir), packed() ? 1u : 4u);
}

TEST_P(LayoutTest, PersistsAcrossRestart) {
  std::string dir = TempDir();
  std::vector<std::string> chunks = StoreChunks(
      dir, 0, 20, [](int i) { return 4096 + i; }, Options());
  auto c = DiskChunkCache::Open(dir, Options());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->Usage().chunks, 20u);
  for (const std::string& s : chunks) {
    std::string out(s.size(), '\0');
    auto hit = (*c)->Read(Sha256::Of(s), s.size(), 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok());
    ASSERT_TRUE(*hit);
    EXPECT_EQ(out, s);
  }
}

// Open does not wait for the scan of what is cached: lookups made while it
// runs find the files themselves, and Usage waits for it.
TEST_P(LayoutTest, LookupsDoNotWaitForTheFirstScan) {
  std::string dir = TempDir();
  std::vector<std::string> chunks = StoreChunks(
      dir, 0, 3000, [](int i) { return 64 + i % 7; }, Options());
  ASSERT_EQ(chunks.size(), 3000u);
  auto c = DiskChunkCache::Open(dir, Options());
  ASSERT_TRUE(c.ok());
  // From the last, which a scan in directory order is least likely to have
  // reached yet.
  for (auto it = chunks.rbegin(); it != chunks.rend(); ++it) {
    const Digest d = Sha256::Of(*it);
    ASSERT_TRUE((*c)->Contains(d));
    std::string out(it->size(), '\0');
    auto hit = (*c)->Read(d, it->size(), 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok() && *hit);
    EXPECT_EQ(out, *it);
  }
  EXPECT_FALSE((*c)->Contains(Sha256::Of("not cached")));
  EXPECT_EQ((*c)->Usage().chunks, chunks.size());
  uint64_t bytes = 0;
  for (const std::string& s : chunks) bytes += s.size();
  EXPECT_EQ((*c)->Usage().bytes, bytes);
}

// Chunks read right after Open, while the first scan runs, stay the most
// recently used once it is done: pruning keeps them.
TEST_P(LayoutTest, ChunksReadDuringTheFirstScanStayRecent) {
  std::string dir = TempDir();
  // (Packed: each chunk in a pack of its own, which is what makes chunk-
  // grained recency visible through pruning.)
  DiskChunkCacheOptions o = Options();
  o.pack_size = 1;
  std::vector<std::string> chunks = StoreChunks(
      dir, 10000, 3000, [](int) { return size_t{100}; }, o);
  ASSERT_EQ(chunks.size(), 3000u);
  auto c = DiskChunkCache::Open(dir, o);
  ASSERT_TRUE(c.ok());
  std::string out(100, '\0');
  for (int i = 0; i < 10; ++i) {
    auto hit =
        (*c)->Read(Sha256::Of(chunks[i * 300]), 100, 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok() && *hit);
  }
  ASSERT_TRUE((*c)->Prune(10 * 100).ok());
  EXPECT_EQ((*c)->Usage().chunks, 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE((*c)->Contains(Sha256::Of(chunks[i * 300]))) << i;
  }
}

TEST_P(LayoutTest, EvictsToBudgetWhileReadersRun) {
  std::string dir = TempDir();
  DiskChunkCacheOptions o = Options();
  o.capacity = 64 * 1024;  // room for ~4 of the chunks below
  auto c = DiskChunkCache::Open(dir, o);
  ASSERT_TRUE(c.ok());
  std::vector<std::string> chunks;
  for (int i = 0; i < 40; ++i) chunks.push_back(Chunk(100 + i, 15000));
  std::atomic<int> wrong{0}, hits{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int k = 0; k < 400; ++k) {
        ReadOrInsert(**c, chunks[rng() % chunks.size()], &hits, &wrong);
      }
    });
  }
  for (auto& t : ts) t.join();
  (*c)->Flush();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(hits.load(), 0);
  EXPECT_GT((*c)->counters().evictions, 0u);
  EXPECT_LE((*c)->Usage().bytes, o.capacity);
  EXPECT_LE(StoredFiles(dir), 5u);
}

TEST_P(LayoutTest, OpenFileSurvivesEviction) {
  std::string dir = TempDir();
  auto c = DiskChunkCache::Open(dir, Options());
  ASSERT_TRUE(c.ok());
  std::string a = Chunk(7, 8192);
  Digest d = Sha256::Of(a);
  // (Packed: not the pack's first chunk, so its offset counts.)
  std::string before = Chunk(6, 1000);
  ASSERT_TRUE((*c)->Insert(Sha256::Of(before), before).ok());
  ASSERT_TRUE((*c)->Insert(d, a).ok());
  (*c)->Flush();
  std::shared_ptr<CachedFile> f = (*c)->OpenChunk(d, a.size());
  ASSERT_NE(f, nullptr);
  ASSERT_TRUE((*c)->Prune(0).ok());
  EXPECT_FALSE((*c)->Contains(d));
  std::string out(a.size(), '\0');
  EXPECT_EQ(f->offset(), packed() ? before.size() : 0u);
  ASSERT_EQ(
      pread(f->fd(), out.data(), out.size(), static_cast<off_t>(f->offset())),
      static_cast<ssize_t>(a.size()));
  EXPECT_EQ(out, a);  // the reader holding the fd still sees its bytes
  EXPECT_EQ(StoredFiles(dir), 0u);
}

// A cache file cut short behind a live cache's back (the fd it keeps open
// for zero-copy replies sees the new size) is a miss from then on, not a
// short file handed out, and the chunk is stored again when refetched.
TEST_P(LayoutTest, AFileTruncatedWhileOpenIsAMiss) {
  std::string dir = TempDir();
  auto c = DiskChunkCache::Open(dir, Options());
  ASSERT_TRUE(c.ok());
  std::string before = Chunk(20, 3000), a = Chunk(21, 9000);
  const Digest d = Sha256::Of(a);
  ASSERT_TRUE((*c)->Insert(Sha256::Of(before), before).ok());
  ASSERT_TRUE((*c)->Insert(d, a).ok());
  (*c)->Flush();
  ASSERT_NE((*c)->OpenChunk(d, a.size()), nullptr);  // its fd kept open
  const std::string path = packed() ? OnlyPack(dir) : (*c)->ChunkPath(d);
  ASSERT_FALSE(path.empty());
  ASSERT_EQ(truncate(path.c_str(), packed() ? 6000 : 4500), 0);
  EXPECT_EQ((*c)->OpenChunk(d, a.size()), nullptr);
  std::string out(a.size(), '\0');
  auto hit = (*c)->Read(d, a.size(), 0, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok());
  EXPECT_FALSE(*hit);
  ASSERT_TRUE((*c)->Insert(d, a).ok());
  (*c)->Flush();
  std::shared_ptr<CachedFile> f = (*c)->OpenChunk(d, a.size());
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(
      pread(f->fd(), out.data(), out.size(), static_cast<off_t>(f->offset())),
      static_cast<ssize_t>(a.size()));
  EXPECT_EQ(out, a);
}

// Without a syncfs per write, files nobody vouches for are re-hashed on
// first use: those changed after the synced mark of the last clean close
// (written by a process that may have died before its data reached the
// disk), never those this process wrote or the mark covers.
TEST(DiskChunkCacheTest, UnsyncedFilesAreRehashedOnFirstUse) {
  std::string dir = TempDir();
  DiskChunkCacheOptions files;  // this test writes chunk files by hand
  files.pack_max_chunk = 0;
  std::string a = Chunk(20, 5000), x = Chunk(21, 6000), y = Chunk(22, 7000),
              z = Chunk(23, 8000);
  Digest da = Sha256::Of(a), dx = Sha256::Of(x), dy = Sha256::Of(y),
         dz = Sha256::Of(z);
  {
    auto c = DiskChunkCache::Open(dir, files);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Insert(da, a).ok());
    (*c)->Flush();
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    (*c)->SyncAndMark();  // what the writer does every 30 s
  }
  ASSERT_EQ(access((dir + "/synced").c_str(), F_OK), 0);
  auto c = DiskChunkCache::Open(dir, files);
  ASSERT_TRUE(c.ok());
  std::string out(8000, '\0');
  auto r = (*c)->Read(da, a.size(), 0, absl::MakeSpan(out.data(), a.size()));
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(out.substr(0, a.size()), a);
  EXPECT_EQ((*c)->counters().rehashed, 0u) << "covered by the mark";

  // Files left by a writer that died before any syncfs: x torn (right
  // size, wrong bytes), y intact.
  std::string bad = x;
  bad[100] ^= 1;
  std::ofstream((*c)->ChunkPath(dx), std::ios::binary) << bad;
  std::ofstream((*c)->ChunkPath(dy), std::ios::binary) << y;
  auto c2 = DiskChunkCache::Open(dir, files);
  ASSERT_TRUE(c2.ok());
  r = (*c2)->Read(dx, x.size(), 0, absl::MakeSpan(out.data(), x.size()));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r) << "a torn file must be a miss";
  EXPECT_NE(access((*c2)->ChunkPath(dx).c_str(), F_OK), 0) << "and removed";
  r = (*c2)->Read(dy, y.size(), 0, absl::MakeSpan(out.data(), y.size()));
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(out.substr(0, y.size()), y);
  EXPECT_EQ((*c2)->counters().rehashed, 2u);
  // Once checked, trusted; and what this process writes is trusted.
  ASSERT_TRUE((*c2)->Insert(dz, z).ok());
  (*c2)->Flush();
  r = (*c2)->Read(dy, y.size(), 0, absl::MakeSpan(out.data(), y.size()));
  ASSERT_TRUE(r.ok() && *r);
  r = (*c2)->Read(dz, z.size(), 0, absl::MakeSpan(out.data(), z.size()));
  ASSERT_TRUE(r.ok() && *r);
  EXPECT_EQ(out.substr(0, z.size()), z);
  EXPECT_EQ((*c2)->counters().rehashed, 2u);
}

TEST(DiskChunkCacheTest, TornAndCorruptFilesAreNeverServed) {
  std::string dir = TempDir();
  DiskChunkCacheOptions files;
  files.pack_max_chunk = 0;
  std::string a = Chunk(9, 10000), b = Chunk(10, 10000);
  Digest da = Sha256::Of(a), db = Sha256::Of(b);
  std::string path_a, path_b;
  {
    auto c = DiskChunkCache::Open(dir, files);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Insert(da, a).ok());
    ASSERT_TRUE((*c)->Insert(db, b).ok());
    (*c)->Flush();
    path_a = (*c)->ChunkPath(da);
    path_b = (*c)->ChunkPath(db);
  }
  // A torn write left in tmp/ by a dead writer, a truncated chunk file, and
  // a chunk file whose content was altered by hand.
  std::ofstream(dir + "/tmp/" + da.Hex() + ".999999.1") << "partial";
  ASSERT_EQ(truncate(path_a.c_str(), 5000), 0);
  {
    std::fstream f(path_b, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1234);
    f.put('\x5a' ^ b[1234]);
  }
  auto c = DiskChunkCache::Open(dir, files);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(CountFiles(dir + "/tmp"), 0u);
  std::string out(10000, '\0');
  auto ra = (*c)->Read(da, a.size(), 0, absl::MakeSpan(out));
  ASSERT_TRUE(ra.ok());
  EXPECT_FALSE(*ra) << "a truncated chunk must be a miss";
  auto rep = (*c)->VerifyAll();
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->removed, 1u);
  EXPECT_FALSE((*c)->Contains(db));
  auto rb = (*c)->Read(db, b.size(), 0, absl::MakeSpan(out));
  ASSERT_TRUE(rb.ok());
  EXPECT_FALSE(*rb);
}

TEST_P(LayoutTest, TwoProcessesShareOneDirectory) {
  std::string dir = TempDir();
  // Both processes insert an overlapping set of chunks concurrently.
  auto work = [&](int first) {
    auto c = DiskChunkCache::Open(dir, Options());
    if (!c.ok()) return 1;
    for (int i = first; i < first + 30; ++i) {
      std::string s = Chunk(1000 + i, 3000 + i);
      if (!(*c)->Insert(Sha256::Of(s), s).ok()) return 2;
    }
    return 0;
  };
  pid_t pid = fork();
  if (pid == 0) _exit(work(0));
  int mine = work(15);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_EQ(mine, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  auto c = DiskChunkCache::Open(dir, Options());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->Usage().chunks, 45u);  // 0..44, the overlap counted once
  // (Packs: one per process; a chunk both wrote is dead space in one.)
  EXPECT_EQ(StoredFiles(dir), packed() ? 2u : 45u);
  for (int i = 0; i < 45; ++i) {
    std::string s = Chunk(1000 + i, 3000 + i);
    std::string out(s.size(), '\0');
    auto hit = (*c)->Read(Sha256::Of(s), s.size(), 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok());
    ASSERT_TRUE(*hit);
    EXPECT_EQ(out, s);
  }
  auto rep = (*c)->VerifyAll();
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->removed, 0u);
}

// Two caches sharing a directory (as two mounts' processes do) keep to one
// budget between them: each finds the other's chunks while writing its own.
TEST_P(LayoutTest, SharersKeepToOneBudget) {
  std::string dir = TempDir();
  DiskChunkCacheOptions o = Options();
  o.capacity = 1 << 20;
  auto a = DiskChunkCache::Open(dir, o);
  auto b = DiskChunkCache::Open(dir, o);
  ASSERT_TRUE(a.ok() && b.ok());
  uint64_t peak = 0;
  for (int i = 0; i < 60; ++i) {
    for (auto* c : {&*a, &*b}) {
      std::string s = Chunk(5000 + i * 2 + (c == &*a ? 0 : 1), 16 << 10);
      ASSERT_TRUE((*c)->Insert(Sha256::Of(s), s).ok());
      (*c)->Flush();
    }
    peak = std::max(peak, DiskBytes(dir));
  }
  // 1.9 MB written in all; the budget plus what each may write before its
  // next look at the directory (an eighth), and a pack being filled.
  EXPECT_LE(peak, (1u << 20) * 3 / 2) << "bytes on disk at the peak";
  EXPECT_GT(peak, 0u);
}

// Packs: a whole layer's small chunks in a few files, big chunks in files of
// their own.
TEST(DiskChunkCachePackTest, SmallChunksShareAPackBigOnesHaveFiles) {
  std::string dir = TempDir();
  DiskChunkCacheOptions o;
  o.pack_max_chunk = 64 * 1024;
  std::vector<std::string> chunks = StoreChunks(
      dir, 0, 500, [](int i) { return 100 + i * 7; }, o);
  std::string big = Chunk(600, 64 * 1024 + 1);
  {
    auto c = DiskChunkCache::Open(dir, o);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Insert(Sha256::Of(big), big).ok());
  }
  EXPECT_EQ(CountFiles(dir + "/packs"), 2u) << "one .pack and its .idx";
  EXPECT_EQ(CountFiles(dir + "/chunks"), 1u);
  chunks.push_back(big);
  auto c = DiskChunkCache::Open(dir, o);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->Usage().chunks, chunks.size());
  EXPECT_EQ((*c)->Usage().packed_chunks, chunks.size() - 1);
  EXPECT_EQ((*c)->Usage().packs, 1u);
  for (const std::string& s : chunks) {
    std::string out(s.size() - 3, '\0');
    auto hit = (*c)->Read(Sha256::Of(s), s.size(), 3, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok() && *hit);
    EXPECT_EQ(out, s.substr(3));
  }
  EXPECT_EQ((*c)->counters().rehashed, chunks.size())
      << "nothing vouches for them: no syncfs mark, another writer";
}

// A packed chunk that fails its hash (torn by a crash, or altered) is
// never served and takes its pack with it; a pack cut short keeps the
// records that are still whole.
TEST(DiskChunkCachePackTest, TornPacksAreNeverServed) {
  for (const bool truncate_it : {false, true}) {
    SCOPED_TRACE(truncate_it ? "truncated" : "a byte altered");
    std::string dir = TempDir();
    std::vector<std::string> chunks =
        StoreChunks(dir, 700, 10, [](int) { return size_t{1000}; });
    const std::string pack = OnlyPack(dir);
    ASSERT_FALSE(pack.empty());
    if (truncate_it) {
      ASSERT_EQ(truncate(pack.c_str(), 9500), 0);  // chunk 9 half gone
    } else {
      std::fstream f(pack, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(4321);  // in chunk 4
      f.put('\x5a' ^ chunks[4][321]);
    }
    auto c = DiskChunkCache::Open(dir);
    ASSERT_TRUE(c.ok());
    std::string out(1000, '\0');
    if (truncate_it) {
      EXPECT_EQ((*c)->Usage().chunks, 9u);
      for (int i = 0; i < 9; ++i) {
        auto hit =
            (*c)->Read(Sha256::Of(chunks[i]), 1000, 0, absl::MakeSpan(out));
        ASSERT_TRUE(hit.ok() && *hit) << i;
        EXPECT_EQ(out, chunks[i]);
      }
      EXPECT_FALSE((*c)->Contains(Sha256::Of(chunks[9])));
      continue;
    }
    auto hit = (*c)->Read(Sha256::Of(chunks[4]), 1000, 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok());
    EXPECT_FALSE(*hit) << "an altered chunk must be a miss";
    EXPECT_EQ((*c)->Usage().chunks, 0u) << "and its pack dropped";
    EXPECT_EQ(CountFiles(dir + "/packs"), 0u);
    // Refetched, it is stored again.
    ASSERT_TRUE((*c)->Insert(Sha256::Of(chunks[4]), chunks[4]).ok());
    (*c)->Flush();
    hit = (*c)->Read(Sha256::Of(chunks[4]), 1000, 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok() && *hit);
    EXPECT_EQ(out, chunks[4]);
  }
}

// `lazypull cache verify` finds an altered packed chunk even when the pack
// is trusted (covered by the synced mark).
TEST(DiskChunkCachePackTest, VerifyFindsAlteredChunksInTrustedPacks) {
  std::string dir = TempDir();
  std::vector<std::string> chunks;
  {
    auto c = DiskChunkCache::Open(dir);
    ASSERT_TRUE(c.ok());
    for (int i = 0; i < 10; ++i) {
      chunks.push_back(Chunk(800 + i, 2000));
      ASSERT_TRUE((*c)->Insert(Sha256::Of(chunks.back()), chunks.back()).ok());
    }
    (*c)->Flush();
    const std::string pack = OnlyPack(dir);
    std::fstream f(pack, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(2000 * 3 + 5);
    f.put('\x5a' ^ chunks[3][5]);
    f.close();
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    (*c)->SyncAndMark();
  }
  auto c = DiskChunkCache::Open(dir);
  ASSERT_TRUE(c.ok());
  std::string out(2000, '\0');
  auto hit = (*c)->Read(Sha256::Of(chunks[0]), 2000, 0, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok() && *hit);
  EXPECT_EQ((*c)->counters().rehashed, 0u) << "covered by the mark";
  auto rep = (*c)->VerifyAll();
  ASSERT_TRUE(rep.ok());
  EXPECT_EQ(rep->removed, 1u);
  // Every chunk is accounted for: checked, or gone with the corrupt pack
  // (how many of each depends on the order they come in).
  EXPECT_EQ(rep->checked + rep->gone, 10u);
  EXPECT_EQ((*c)->Usage().chunks, 0u);
  EXPECT_EQ(CountFiles(dir + "/packs"), 0u);
}

// What another process packs is found when this one misses on it, without
// waiting for a rescan.
TEST(DiskChunkCachePackTest, AnotherWritersChunksAreFoundOnAMiss) {
  std::string dir = TempDir();
  auto reader = DiskChunkCache::Open(dir);
  ASSERT_TRUE(reader.ok());
  std::string a = Chunk(900, 3000);
  std::string out(a.size(), '\0');
  auto hit = (*reader)->Read(Sha256::Of(a), a.size(), 0, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok());
  EXPECT_FALSE(*hit);
  {
    auto writer = DiskChunkCache::Open(dir);  // (another pack of its own)
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Insert(Sha256::Of(a), a).ok());
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  hit = (*reader)->Read(Sha256::Of(a), a.size(), 0, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok());
  EXPECT_TRUE(*hit);
  EXPECT_EQ(out, a);
  EXPECT_EQ((*reader)->counters().rehashed, 1u) << "not its own: hashed";
}

// Over budget, packs go whole, least recently used first; no reader ever
// sees a wrong byte.
TEST(DiskChunkCachePackTest, EvictsWholePacks) {
  std::string dir = TempDir();
  DiskChunkCacheOptions o;
  o.capacity = 64000;  // packs of at most 4000 bytes: 4 of these chunks
  auto c = DiskChunkCache::Open(dir, o);
  ASSERT_TRUE(c.ok());
  std::vector<std::string> chunks;
  for (int i = 0; i < 200; ++i) {
    chunks.push_back(Chunk(1000 + i, 1000));
    ASSERT_TRUE((*c)->Insert(Sha256::Of(chunks.back()), chunks.back()).ok());
    if (i % 4 == 3) (*c)->Flush();
  }
  (*c)->Flush();
  EXPECT_LE((*c)->Usage().bytes, o.capacity);
  EXPECT_GT((*c)->counters().evictions, 100u);
  EXPECT_LE(CountFiles(dir + "/packs") / 2, 17u);
  EXPECT_FALSE((*c)->Contains(Sha256::Of(chunks[0])));
  int present = 0;
  for (const std::string& s : chunks) {
    std::string out(s.size(), '\0');
    auto hit = (*c)->Read(Sha256::Of(s), s.size(), 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok());
    if (*hit) {
      ++present;
      EXPECT_EQ(out, s);
    }
  }
  EXPECT_GE(present, 4);
  EXPECT_TRUE((*c)->Contains(Sha256::Of(chunks.back())));
}

// Many small chunks, several to a pack, inserted, read and evicted from
// eight threads at once, while another cache on the same directory prunes
// and rescans: every hit is the chunk's bytes.
TEST(DiskChunkCachePackTest, ConcurrentReadersWritersAndEvictionsOfPacks) {
  std::string dir = TempDir();
  DiskChunkCacheOptions o;
  o.capacity = 64000;  // packs of at most 4000 bytes: a few chunks each
  auto c = DiskChunkCache::Open(dir, o);
  ASSERT_TRUE(c.ok());
  std::vector<std::string> chunks;
  for (int i = 0; i < 120; ++i) chunks.push_back(Chunk(1300 + i, 700 + i));
  std::atomic<int> wrong{0}, hits{0};
  std::atomic<bool> done{false};
  std::thread pruner([&] {
    auto other = DiskChunkCache::Open(dir, o);
    if (!other.ok()) return;
    while (!done.load()) {
      (void)(*other)->Prune(32000);
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(50 + t);
      for (int k = 0; k < 3000; ++k) {
        const std::string& s = chunks[rng() % chunks.size()];
        ReadOrInsert(**c, s, &hits, &wrong);
        if (k % 50 == 0) {
          const Digest d = Sha256::Of(s);
          std::shared_ptr<CachedFile> f = (*c)->OpenChunk(d, s.size());
          if (f != nullptr) {
            std::string via_fd(s.size(), '\0');
            if (pread(f->fd(), via_fd.data(), via_fd.size(),
                      static_cast<off_t>(f->offset())) !=
                    static_cast<ssize_t>(s.size()) ||
                via_fd != s) {
              ++wrong;
            }
          }
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  done = true;
  pruner.join();
  (*c)->Flush();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(hits.load(), 0);
  EXPECT_GT((*c)->counters().evictions, 0u);
  EXPECT_LE((*c)->Usage().bytes, o.capacity);
}

// A cache directory another user could plant files in is refused (its
// files are created, trusted and deleted by name: a planted symlink took
// those writes and deletes outside it); so are chunks/, packs/, tmp/ that
// are not real directories.
TEST(DiskChunkCacheTest, RefusesADirectoryOthersCouldPlantFilesIn) {
  const std::string open_dir = TempDir();
  ASSERT_EQ(chmod(open_dir.c_str(), 01777), 0);
  absl::Status s = DiskChunkCache::Open(open_dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(std::string(s.message()).find("writable by other users"),
            std::string::npos)
      << s;
  // (Another user's directory: where this test may give one away.)
  const std::string theirs = TempDir();
  if (chown(theirs.c_str(), 65534, 65534) == 0) {
    s = DiskChunkCache::Open(theirs).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(std::string(s.message()).find("belongs to uid 65534"),
              std::string::npos)
        << s;
  }
  const std::string linked = TempDir(), elsewhere = TempDir();
  ASSERT_EQ(symlink(elsewhere.c_str(), (linked + "/packs").c_str()), 0);
  s = DiskChunkCache::Open(linked).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(CountFiles(elsewhere), 0u);
}

// A pack index that is a fifo, or a sparse terabyte, is not a pack index:
// the cache opens (it hung on the fifo, and read the terabyte whole).
TEST(DiskChunkCachePackTest, IndexesThatAreNotFilesAreIgnored) {
  std::string dir = TempDir();
  { ASSERT_TRUE(DiskChunkCache::Open(dir).ok()); }
  const std::string packs = dir + "/packs/" + std::to_string(getpid());
  ASSERT_EQ(mkfifo((packs + "-1-0.idx").c_str(), 0600), 0);
  std::ofstream(packs + "-1-0.pack");
  { std::ofstream big(packs + "-2-0.idx"); }
  ASSERT_EQ(truncate((packs + "-2-0.idx").c_str(), off_t{1} << 40), 0);
  std::ofstream(packs + "-2-0.pack");
  auto c = DiskChunkCache::Open(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::string a = Chunk(7, 1000);
  ASSERT_TRUE((*c)->Insert(Sha256::Of(a), a).ok());
}

// A pack left empty by a writer that died, and an index whose pack is
// gone, are removed at the next Open; a live writer's empty pack stays.
TEST(DiskChunkCachePackTest, LeftoversOfDeadWritersAreRemoved) {
  std::string dir = TempDir();
  { ASSERT_TRUE(DiskChunkCache::Open(dir).ok()); }
  pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_GT(child, 0);
  waitpid(child, nullptr, 0);  // a pid whose process is dead
  const std::string dead = dir + "/packs/" + std::to_string(child);
  const std::string live = dir + "/packs/" + std::to_string(getpid());
  std::ofstream(dead + "-1-0.pack");
  std::ofstream(dead + "-1-0.idx");
  std::ofstream(dead + "-2-0.idx");  // its pack already unlinked
  // Bytes never indexed (a batch cut short by ENOSPC or a kill): no
  // chunk's, counted nowhere, and were never freed.
  std::ofstream(dead + "-3-0.pack") << std::string(600 << 10, 'x');
  std::ofstream(dead + "-3-0.idx");
  std::ofstream(live + "-1-0.pack") << std::string(1000, 'y');
  std::ofstream(live + "-1-0.idx");
  auto c = DiskChunkCache::Open(dir);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(access((dead + "-1-0.idx").c_str(), F_OK), 0);
  EXPECT_NE(access((dead + "-2-0.idx").c_str(), F_OK), 0);
  EXPECT_NE(access((dead + "-3-0.pack").c_str(), F_OK), 0);
  EXPECT_NE(access((dead + "-3-0.idx").c_str(), F_OK), 0);
  EXPECT_EQ(CountFiles(dir + "/packs"), 2u) << "a live writer's stays";
}

// Two processes that filled one cache at once both packed the same chunks:
// the second copy is counted in the cache's size (it is on disk) and, once
// its writer is gone, its pack goes first when space is needed (no lookup
// uses it, so no LRU entry ever reached it: it was never freed).
TEST(DiskChunkCachePackTest, DuplicatePacksOfDeadWritersCountAndGoFirst) {
  const std::string dir = TempDir();
  std::vector<std::string> chunks;
  uint64_t total = 0;
  for (int i = 0; i < 40; ++i) {
    chunks.push_back(Chunk(2000 + i, 1000));
    total += chunks.back().size();
  }
  // Each writer fills a directory of its own (so neither sees the other's
  // chunks), in a process that then ends; the packs then meet in one.
  for (const char* sub : {"/a", "/b"}) {
    const std::string d = dir + sub;
    pid_t child = fork();
    if (child == 0) {
      auto c = DiskChunkCache::Open(d);
      if (!c.ok()) _exit(1);
      for (const std::string& s : chunks) {
        if (!(*c)->Insert(Sha256::Of(s), s).ok()) _exit(2);
      }
      (*c)->Flush();
      _exit(0);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  {
    DIR* packs = opendir((dir + "/b/packs").c_str());
    ASSERT_NE(packs, nullptr);
    while (dirent* e = readdir(packs)) {
      if (e->d_name[0] == '.') continue;
      const std::string from = dir + "/b/packs/" + e->d_name;
      const std::string to = dir + "/a/packs/" + e->d_name;
      EXPECT_EQ(rename(from.c_str(), to.c_str()), 0) << from;
    }
    closedir(packs);
  }
  EXPECT_EQ(CountFiles(dir + "/a/packs"), 4u);
  auto c = DiskChunkCache::Open(dir + "/a");
  ASSERT_TRUE(c.ok());
  CacheUsage u = (*c)->Usage();
  EXPECT_EQ(u.chunks, 40u);
  EXPECT_EQ(u.bytes, 2 * total) << "the duplicate pack is on disk too";
  ASSERT_TRUE((*c)->Prune(total).ok());
  EXPECT_EQ((*c)->Usage().bytes, total);
  EXPECT_EQ(CountFiles(dir + "/a/packs"), 2u) << "the duplicates went";
  for (const std::string& s : chunks) {
    std::string out(s.size(), '\0');
    auto hit = (*c)->Read(Sha256::Of(s), s.size(), 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok());
    EXPECT_TRUE(*hit) << "a live chunk was evicted";
    EXPECT_EQ(out, s);
  }
}

// A pack another cache evicts while this one appends to it: what it held
// is forgotten, and the next chunks go into a new pack.
TEST(DiskChunkCachePackTest, AWriterWhosePackIsEvictedStartsAnother) {
  std::string dir = TempDir();
  auto writer = DiskChunkCache::Open(dir);
  ASSERT_TRUE(writer.ok());
  std::string a = Chunk(1100, 2000), b = Chunk(1101, 2000);
  ASSERT_TRUE((*writer)->Insert(Sha256::Of(a), a).ok());
  (*writer)->Flush();
  {
    auto other = DiskChunkCache::Open(dir);
    ASSERT_TRUE(other.ok());
    ASSERT_TRUE((*other)->Prune(0).ok());
  }
  EXPECT_EQ(CountFiles(dir + "/packs"), 0u);
  ASSERT_TRUE((*writer)->Insert(Sha256::Of(b), b).ok());
  (*writer)->Flush();
  EXPECT_FALSE((*writer)->Contains(Sha256::Of(a)));
  EXPECT_EQ((*writer)->Usage().chunks, 1u);
  EXPECT_EQ(CountFiles(dir + "/packs"), 2u);
  std::string out(b.size(), '\0');
  auto hit = (*writer)->Read(Sha256::Of(b), b.size(), 0, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok() && *hit);
  EXPECT_EQ(out, b);
  auto reader = DiskChunkCache::Open(dir);  // and the new pack is on disk
  ASSERT_TRUE(reader.ok());
  hit = (*reader)->Read(Sha256::Of(b), b.size(), 0, absl::MakeSpan(out));
  ASSERT_TRUE(hit.ok() && *hit);
  EXPECT_EQ(out, b);
}

TEST(BlockIoTest, UringAndPosixAgree) {
  std::string dir = TempDir();
  std::string path = dir + "/f";
  std::string data = Chunk(3, 3 << 20);
  std::ofstream(path, std::ios::binary) << data;
  int fd = open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<std::unique_ptr<BlockIo>> ios;
  ios.push_back(BlockIo::NewPosix());
  std::unique_ptr<BlockIo> u;
  if (BlockIo::NewUring(8, &u).ok()) ios.push_back(std::move(u));
  for (auto& io : ios) {
    // More ops than the queue depth, odd sizes, one past the end.
    std::vector<std::string> bufs(20, std::string(100000, '\0'));
    std::vector<IoOp> ops;
    for (size_t i = 0; i < bufs.size(); ++i) {
      ops.push_back({fd, i * 150001, bufs[i].data(), bufs[i].size() - i});
    }
    ASSERT_TRUE(io->ReadAll(ops).ok());
    for (size_t i = 0; i < bufs.size(); ++i) {
      EXPECT_EQ(bufs[i].substr(0, ops[i].len),
                data.substr(ops[i].offset, ops[i].len));
    }
    std::string tail(10, '\0');
    IoOp past{fd, data.size() - 5, tail.data(), tail.size()};
    EXPECT_FALSE(io->ReadAll({&past, 1}).ok());
  }
  close(fd);
}

// A full disk (not the budget): the writer makes room by evicting, so the
// cache keeps caching (every later miss would otherwise be fetched again,
// forever), and says so once, not once per chunk.
TEST(DiskChunkCacheFullDiskTest, EvictsToMakeRoomAndKeepsCaching) {
  if (geteuid() != 0) GTEST_SKIP() << "SKIPPED: needs root (a small tmpfs)";
  const std::string dir = TempDir();
  if (mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=4m") != 0) {
    GTEST_SKIP() << "SKIPPED: cannot mount a tmpfs here: " << strerror(errno);
  }
  struct Unmount {
    std::string d;
    ~Unmount() { umount2(d.c_str(), MNT_DETACH); }
  } unmount{dir};
  DiskChunkCacheOptions o;
  o.pack_max_chunk = 0;                               // a file per chunk
  o.full_disk_eviction_every = absl::ZeroDuration();  // every time, here
  auto c = DiskChunkCache::Open(dir + "/cache", o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::string> chunks;
  for (int i = 0; i < 40; ++i) {  // 10 MiB through a 4 MiB disk
    chunks.push_back(Chunk(900 + i, 256 << 10));
    ASSERT_TRUE((*c)->Insert(Sha256::Of(chunks.back()), chunks.back()).ok());
    (*c)->Flush();
  }
  // The last chunks were stored: room was made for them.
  std::string out(256 << 10, '\0');
  for (int i = 37; i < 40; ++i) {
    auto hit =
        (*c)->Read(Sha256::Of(chunks[i]), out.size(), 0, absl::MakeSpan(out));
    ASSERT_TRUE(hit.ok()) << hit.status();
    EXPECT_TRUE(*hit) << "chunk " << i << " not cached";
    EXPECT_TRUE(out == chunks[i]);
  }
  EXPECT_GT((*c)->counters().evictions, 0u);
}

}  // namespace
}  // namespace lazypull
