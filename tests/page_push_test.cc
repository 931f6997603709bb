// Pushing verified bytes into the kernel's page cache (LayerFs's
// push_pages, FUSE_NOTIFY_STORE; on by default, guarded by the FUSE
// watchdog), through real mounts of a layer of files of
// awkward sizes (one byte, a page, a page and a bit, several 64 KiB chunks
// and a partial page):
// - a reader that takes the first 4 KiB of a five-chunk file with O_DIRECT
//   (which leaves the page cache alone) sets off read-ahead of the other
//   four chunks; their pages become resident without a read (mincore(2) on a
//   mapping, which faults nothing in), and are exactly the file's bytes;
//   with --no-push-pages nothing becomes resident;
// - listing a layer whose chunks were all cached before this mount (a warm
//   restart) pushes nothing: a `find /` must not read a whole layer into
//   memory.
// The serving process reports the bytes it pushed at unmount.
//
// Needs root and /dev/fuse (tag `no-sandbox`); skips loudly otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "core/testing/tar_builder.h"
#include "core/testing/test_layer.h"
#include "gtest/gtest.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

// Pages of `path` resident in the page cache, and its page count.
struct Residency {
  size_t resident = 0, pages = 0;
};
Residency Resident(const std::string& path) {
  Residency r;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path << ": " << strerror(errno);
  if (fd < 0) return r;
  struct stat st;
  EXPECT_EQ(fstat(fd, &st), 0);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t size = static_cast<size_t>(st.st_size);
  r.pages = (size + page - 1) / page;
  if (size == 0) {
    close(fd);
    return r;
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  EXPECT_NE(m, MAP_FAILED) << path << ": " << strerror(errno);
  if (m == MAP_FAILED) return r;
  std::vector<unsigned char> vec(r.pages);
  EXPECT_EQ(mincore(m, size, vec.data()), 0) << strerror(errno);
  for (unsigned char v : vec) r.resident += v & 1;
  munmap(m, size);
  return r;
}

// The byte count of the serving process's "N bytes pushed into the page
// cache" line at unmount (0 if it has none).
uint64_t PushedBytes(const std::string& log) {
  const std::string tail = " bytes pushed into the page cache";
  const size_t at = log.find(tail);
  if (at == std::string::npos) {
    ADD_FAILURE() << "no pushed-bytes line in the log:\n" << log;
    return 0;
  }
  size_t begin = at;
  while (begin > 0 && isdigit(static_cast<unsigned char>(log[begin - 1]))) {
    --begin;
  }
  uint64_t n = 0;
  EXPECT_TRUE(absl::SimpleAtoi(log.substr(begin, at - begin), &n))
      << "no byte count before \"" << tail << "\" in:\n"
      << log;
  return n;
}

class PagePushTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LAZYPULL_SKIP_WITHOUT_FUSE();
    const size_t sizes[] = {1, 4096, 4097, 5000, 65536, 200000, 300001};
    TarBuilder tar;
    tar.Dir("d/");
    for (size_t k = 0; k < std::size(sizes); ++k) {
      const std::string name = "d/f" + std::to_string(k);
      files_[name] = RandomBytes(sizes[k], static_cast<int>(k) + 1);
      tar.File(name, files_[name]);
    }
    layer_ = ConvertTar(tar.Finish(), "estargz");
    ASSERT_FALSE(layer_.blob.empty());
  }

  void TearDown() override {
    EXPECT_EQ(janitor_.DetachAll(), 0) << "the test left a mount behind";
  }

  LayerMount Mount(const std::string& cache_dir,
                   const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"--toc-digest", layer_.toc_digest};
    args.insert(args.end(), extra.begin(), extra.end());
    LayerMount m = MountLayer(&janitor_, layer_.blob, args, "", cache_dir);
    EXPECT_TRUE(m.ok()) << m.result.err;
    return m;
  }

  void Unmount(const LayerMount& m) {
    RunResult u =
        ::lazypull::testing::Run({LazypullBinary(), "unmount", m.mountpoint});
    ASSERT_EQ(u.exit_code, 0) << u.out << u.err;
  }

  // Reads the first 4 KiB of d/f6 (five 64 KiB chunks) with O_DIRECT.
  void ReadHeadDirect(const LayerMount& m) {
    const std::string path = m.mountpoint + "/d/f6";
    const int fd = open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    ASSERT_GE(fd, 0) << path << ": " << strerror(errno);
    void* buf = nullptr;
    ASSERT_EQ(posix_memalign(&buf, 4096, 4096), 0);
    EXPECT_EQ(pread(fd, buf, 4096, 0), 4096) << strerror(errno);
    EXPECT_EQ(memcmp(buf, files_["d/f6"].data(), 4096), 0);
    free(buf);
    close(fd);
  }

  // d/f6's resident pages, once the count reaches `want` (or after `wait`).
  size_t ResidentOfF6(const LayerMount& m, size_t want,
                      std::chrono::milliseconds wait) {
    const auto until = std::chrono::steady_clock::now() + wait;
    size_t got = 0;
    do {
      got = Resident(m.mountpoint + "/d/f6").resident;
      if (got >= want) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (std::chrono::steady_clock::now() < until);
    return got;
  }

  MountJanitor janitor_;
  std::map<std::string, std::string> files_;
  ConvertedLayer layer_;
};

// The pages of d/f6 past its first chunk.
constexpr size_t kReadAheadPages = (300001 - 65536 + 4095) / 4096;

TEST_F(PagePushTest, ReadAheadArrivesInThePageCacheExactly) {
  LayerMount m = Mount(MakeTempDir("cache"), {"--push-pages"});
  ASSERT_TRUE(m.ok());
  ReadHeadDirect(m);
  EXPECT_GE(ResidentOfF6(m, kReadAheadPages, std::chrono::seconds(10)),
            kReadAheadPages)
      << "log:\n"
      << m.Log();
  // What is resident is the file's bytes (read through the page cache).
  EXPECT_EQ(ReadWholeFile(m.mountpoint + "/d/f6").data, files_["d/f6"]);
  Unmount(m);
  // Read-ahead's bytes at least; at most the whole file on top of them (the
  // lookup's thread may mark d/f6 known only after the test's read and the
  // read-ahead ran: then the whole fetched file is pushed as a known one).
  const uint64_t pushed = PushedBytes(m.Log());
  EXPECT_GE(pushed, 300001u - 65536u) << m.Log();
  EXPECT_LE(pushed, 300001u + 300001u - 65536u) << m.Log();
}

TEST_F(PagePushTest, NothingArrivesWithoutPushes) {
  LayerMount m = Mount(MakeTempDir("cache"), {"--no-push-pages"});
  ASSERT_TRUE(m.ok());
  ReadHeadDirect(m);
  EXPECT_EQ(ResidentOfF6(m, 1, std::chrono::milliseconds(500)), 0u);
  Unmount(m);
  EXPECT_EQ(PushedBytes(m.Log()), 0u) << m.Log();
}

TEST_F(PagePushTest, ListingAWarmLayerPushesNothing) {
  const std::string cache = MakeTempDir("cache");
  {
    LayerMount m = Mount(cache, {"--push-pages"});
    ASSERT_TRUE(m.ok());
    for (const auto& [name, data] : files_) {
      ASSERT_EQ(ReadWholeFile(m.mountpoint + "/" + name).data, data) << name;
    }
    Unmount(m);
  }
  LayerMount m = Mount(cache, {"--push-pages"});
  ASSERT_TRUE(m.ok());
  DIR* d = opendir((m.mountpoint + "/d").c_str());
  ASSERT_NE(d, nullptr);
  size_t n = 0;
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  EXPECT_EQ(n, files_.size() + 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (const auto& [name, data] : files_) {
    EXPECT_EQ(Resident(m.mountpoint + "/" + name).resident, 0u) << name;
  }
  Unmount(m);
  EXPECT_EQ(PushedBytes(m.Log()), 0u) << m.Log();
}

}  // namespace
}  // namespace lazypull::testing
