// Known-time page pushes (LayerFs's push_pages for files the kernel learns
// of), on a real mount served in this process: files that background fetch
// (here: FillSpan, as its spans do) brought in whole while the kernel knew
// nothing of them are pushed into the page cache when a listing or lookup
// names them, if they are at most push_listed_max bytes; a bigger one is
// not, and nothing is without push_pages; with the product's disk cache,
// whose writes lag behind the fills (the pusher once skipped files whose
// chunks were still queued), and with a cache in memory. Residency is read
// with mincore(2) on a mapping, which faults nothing in; the pushed pages
// are the files' exact bytes.
//
// Needs root and /dev/fuse (tag `no-sandbox`); skips loudly otherwise.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/cached_layer.h"
#include "core/disk_chunk_cache.h"
#include "core/layer_reader.h"
#include "core/memory_blob_source.h"
#include "core/memory_chunk_cache.h"
#include "core/testing/test_layer.h"
#include "gtest/gtest.h"
#include "tests/in_process_mount.h"
#include "tests/testdata.h"
#include "tests/tree_check.h"

namespace lazypull::testing {
namespace {

// Resident pages of `path` (mincore on a shared mapping: no page faults).
size_t ResidentPages(const std::string& path, size_t size) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << path << ": " << strerror(errno);
  if (fd < 0) return 0;
  void* m = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  EXPECT_NE(m, MAP_FAILED) << path << ": " << strerror(errno);
  if (m == MAP_FAILED) return 0;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  EXPECT_EQ(mincore(m, size, vec.data()), 0) << strerror(errno);
  size_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  munmap(m, size);
  return n;
}

size_t Pages(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (size + page - 1) / page;
}

// (pushes on, a disk cache rather than one in memory)
class ListingPushTest
    : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(ListingPushTest, FilesFetchedUnseenArePushedWhenNamed) {
  LAZYPULL_SKIP_WITHOUT_FUSE();
  const auto [push, disk] = GetParam();
  const uint64_t kListedMax = 256 << 10;
  // Sizes around pages and chunks; the last is over push_listed_max.
  const std::vector<size_t> sizes = {1,     4096,   4097,
                                     65537, 200000, kListedMax + 1};
  std::map<std::string, std::string> files;
  TestLayer t;
  t.AddDir("d");
  for (size_t k = 0; k < sizes.size(); ++k) {
    const std::string name = absl::StrCat("d/f", k);
    files[name] = RandomBytes(sizes[k], static_cast<int>(k) + 11);
    t.AddFile(name, files[name], /*chunk_size=*/64 << 10);
  }
  auto reader =
      LayerReader::Open(std::make_shared<MemoryBlobSource>(t.Build().blob), {});
  ASSERT_TRUE(reader.ok()) << reader.status();
  CachedLayerOptions lo;
  lo.readahead_chunks = 0;
  // A disk cache (the product's: its writes lag behind the fills) or one
  // in memory (no files at all): pushes read through either.
  std::shared_ptr<ChunkCache> cache = std::make_shared<MemoryChunkCache>(0);
  if (disk) {
    auto d = DiskChunkCache::Open(MakeTempDir("cache"));
    ASSERT_TRUE(d.ok()) << d.status();
    cache = std::move(*d);
  }
  auto layer =
      std::make_shared<CachedLayer>(std::move(*reader), std::move(cache), lo);
  LayerFsOptions fo;
  fo.push_pages = push;
  fo.push_listed_max = kListedMax;
  auto mount = InProcessMount::Start(layer, fo);
  ASSERT_TRUE(mount.ok()) << mount.status();
  LayerFs& fs = (*mount)->fs();
  const std::string dir = (*mount)->dir();

  // Everything fetched before the kernel has heard of any file.
  std::vector<uint32_t> all(layer->reader().index().chunks().size());
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
  for (const auto& span : layer->PlanSpans(all, 1 << 20, 0)) {
    ASSERT_TRUE(layer->FillSpan(span, ReadPriority::kBackground).ok());
  }
  EXPECT_EQ(fs.pushed_bytes(), 0u) << "no file was known at fill time";

  // A listing (readdirplus, or lookups by the stats below) names them.
  DIR* d = opendir((dir + "/d").c_str());
  ASSERT_NE(d, nullptr) << strerror(errno);
  size_t listed = 0;
  while (readdir(d) != nullptr) ++listed;
  closedir(d);
  EXPECT_EQ(listed, files.size() + 2);
  uint64_t want_pushed = 0;
  for (const auto& [name, data] : files) {
    struct stat st;
    ASSERT_EQ(stat((dir + "/" + name).c_str(), &st), 0) << name;
    if (push && data.size() <= kListedMax) want_pushed += data.size();
  }
  for (int i = 0; i < 250 && fs.pushed_bytes() < want_pushed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(fs.pushed_bytes(), want_pushed)
      << fs.pushes_dropped() << " pushes dropped";
  for (const auto& [name, data] : files) {
    const size_t resident = ResidentPages(dir + "/" + name, data.size());
    if (push && data.size() <= kListedMax) {
      EXPECT_EQ(resident, Pages(data.size())) << name;
    } else {
      EXPECT_EQ(resident, 0u) << name;
    }
    EXPECT_EQ(ReadWholeFile(dir + "/" + name).data, data) << name;
  }

  EXPECT_EQ(umount2(dir.c_str(), MNT_DETACH), 0) << strerror(errno);
  EXPECT_TRUE((*mount)->Join().ok());
  EXPECT_TRUE((*mount)->stopped_pushing());
}

INSTANTIATE_TEST_SUITE_P(
    PushOnAndOff, ListingPushTest,
    ::testing::Combine(::testing::Bool(), ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<bool, bool>>& i) {
      return std::string(std::get<0>(i.param) ? "Pushes" : "NoPushes") +
             (std::get<1>(i.param) ? "DiskCache" : "MemoryCache");
    });

}  // namespace
}  // namespace lazypull::testing
