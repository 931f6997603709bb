// Pushing verified bytes into the kernel's page cache (LayerFs's
// push_pages, FUSE_NOTIFY_STORE), through real mounts.
//
// A layer of small files of awkward sizes (one byte, a page, a page and a
// bit, several 64 KiB chunks and a partial page) is read once through a
// mount, so that the chunk cache holds it; a second mount over the same cache
// then only lists the directory (readdirplus: the kernel learns of every
// file). With pushes on, every page of every file becomes resident in the
// page cache without a single read (mincore(2) on a mapping, which faults
// nothing in), and what is resident is the files' exact bytes; with
// --no-push-pages nothing becomes resident. The serving process reports the
// bytes it pushed at unmount.
//
// Needs root and /dev/fuse (tag `no-sandbox`); skips loudly otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

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
    cache_dir_ = MakeTempDir("cache");
    // Fill the chunk cache through a first mount.
    LayerMount m =
        MountLayer(&janitor_, layer_.blob, {"--toc-digest", layer_.toc_digest},
                   "", cache_dir_);
    ASSERT_TRUE(m.ok()) << m.result.err;
    for (const auto& [name, data] : files_) {
      ASSERT_EQ(ReadWholeFile(m.mountpoint + "/" + name).data, data) << name;
    }
    ASSERT_EQ(
        ::lazypull::testing::Run({LazypullBinary(), "unmount", m.mountpoint})
            .exit_code,
        0);
  }

  void TearDown() override {
    EXPECT_EQ(janitor_.DetachAll(), 0) << "the test left a mount behind";
  }

  // A second mount over the warm cache; lists d/ and nothing else.
  LayerMount MountAndList(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"--toc-digest", layer_.toc_digest};
    args.insert(args.end(), extra.begin(), extra.end());
    LayerMount m = MountLayer(&janitor_, layer_.blob, args, "", cache_dir_);
    EXPECT_TRUE(m.ok()) << m.result.err;
    if (!m.ok()) return m;
    DIR* d = opendir((m.mountpoint + "/d").c_str());
    EXPECT_NE(d, nullptr);
    size_t n = 0;
    while (d != nullptr && readdir(d) != nullptr) ++n;
    if (d != nullptr) closedir(d);
    EXPECT_EQ(n, files_.size() + 2);
    return m;
  }

  // Pages resident, summed over the files, once the total stops growing
  // (or after `wait`).
  Residency Settled(const LayerMount& m, std::chrono::milliseconds wait) {
    Residency total;
    const auto until = std::chrono::steady_clock::now() + wait;
    do {
      total = {};
      for (const auto& [name, data] : files_) {
        const Residency r = Resident(m.mountpoint + "/" + name);
        total.resident += r.resident;
        total.pages += r.pages;
      }
      if (total.resident == total.pages) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (std::chrono::steady_clock::now() < until);
    return total;
  }

  MountJanitor janitor_;
  std::map<std::string, std::string> files_;
  ConvertedLayer layer_;
  std::string cache_dir_;
};

TEST_F(PagePushTest, ListedCachedFilesArriveInThePageCacheExactly) {
  LayerMount m = MountAndList({});
  ASSERT_TRUE(m.ok());
  const Residency r = Settled(m, std::chrono::seconds(10));
  EXPECT_GT(r.pages, 0u);
  EXPECT_EQ(r.resident, r.pages) << "pages pushed\nlog:\n" << m.Log();
  // What is resident is the files' bytes (read through the page cache).
  for (const auto& [name, data] : files_) {
    EXPECT_EQ(ReadWholeFile(m.mountpoint + "/" + name).data, data) << name;
  }
  ASSERT_EQ(
      ::lazypull::testing::Run({LazypullBinary(), "unmount", m.mountpoint})
          .exit_code,
      0);
  uint64_t total = 0;
  for (const auto& [name, data] : files_) total += data.size();
  EXPECT_NE(
      m.Log().find(std::to_string(total) + " bytes pushed into the page cache"),
      std::string::npos)
      << m.Log();
}

TEST_F(PagePushTest, NothingArrivesWithoutPushes) {
  LayerMount m = MountAndList({"--no-push-pages"});
  ASSERT_TRUE(m.ok());
  const Residency r = Settled(m, std::chrono::milliseconds(500));
  EXPECT_GT(r.pages, 0u);
  EXPECT_EQ(r.resident, 0u);
  ASSERT_EQ(
      ::lazypull::testing::Run({LazypullBinary(), "unmount", m.mountpoint})
          .exit_code,
      0);
  EXPECT_NE(m.Log().find(" 0 bytes pushed into the page cache"),
            std::string::npos)
      << m.Log();
}

}  // namespace
}  // namespace lazypull::testing
