#include "core/cached_layer.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/layer_writer.h"
#include "core/memory_blob_source.h"
#include "core/memory_chunk_cache.h"
#include "core/status_macros.h"
#include "core/testing/stream_source.h"
#include "core/testing/tar_builder.h"
#include "core/testing/test_layer.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using testing::StreamSource;
using testing::TestBlob;
using testing::TestLayer;

std::string Random(size_t n, int seed) { return testing::RandomBytes(n, seed); }

// Files f0..f<n-1> of `size` random bytes each (file i from seed `seed + i`),
// their contents in *data.
TestLayer SameSizeFiles(int n, size_t size, int seed,
                        std::vector<std::string>* data) {
  TestLayer t;
  for (int i = 0; i < n; ++i) {
    data->push_back(Random(size, seed + i));
    t.AddFile(absl::StrCat("f", i), data->back());
  }
  return t;
}

// A layer over `Source` (a MemoryBlobSource, or a test double with
// ResetCounters()), a memory cache, and helpers.
template <typename Source>
struct BasicFixture {
  std::shared_ptr<Source> source;
  std::shared_ptr<const LayerReader> reader;
  std::shared_ptr<MemoryChunkCache> cache;
  std::unique_ptr<CachedLayer> layer;

  explicit BasicFixture(const std::string& blob, CachedLayerOptions o = {}) {
    source = std::make_shared<Source>(blob);
    auto r = LayerReader::Open(source, {});
    EXPECT_TRUE(r.ok()) << r.status();
    reader = std::move(*r);
    cache = std::make_shared<MemoryChunkCache>(0);
    layer = std::make_unique<CachedLayer>(reader, cache, o);
    source->ResetCounters();
  }
  uint32_t Inode(const std::string& path) {
    auto i = reader->index().Resolve(path);
    EXPECT_TRUE(i.has_value()) << path;
    return *i;
  }
  std::string ReadAll(uint32_t ino) {
    std::string out(reader->index().inode(ino).size, '\0');
    auto n = layer->Read(ino, 0, absl::MakeSpan(out));
    EXPECT_TRUE(n.ok()) << n.status();
    return out;
  }
  std::string Read(const std::string& path) { return ReadAll(Inode(path)); }
  std::vector<uint32_t> AllChunks() const {
    std::vector<uint32_t> all(reader->index().chunks().size());
    for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
    return all;
  }
};
using Fixture = BasicFixture<MemoryBlobSource>;

// A slow source that records how many reads overlap.
class SlowSource : public BlobSource {
 public:
  explicit SlowSource(std::string blob) : inner_(std::move(blob)) {}
  uint64_t size() const override { return inner_.size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority p) override {
    int now = ++active_;
    int seen = max_.load();
    while (now > seen && !max_.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    absl::Status st = inner_.ReadAt(offset, dst, p);
    --active_;
    return st;
  }
  using BlobSource::ReadAt;
  std::string Describe() const override { return "slow"; }
  int max_concurrent() const { return max_.load(); }

 private:
  MemoryBlobSource inner_;
  std::atomic<int> active_{0}, max_{0};
};

int MaxConcurrentFills(uint64_t max_fill_bytes,
                       ReadPriority priority = ReadPriority::kPrefetch,
                       uint64_t huge_fill_bytes = 64 << 20) {
  std::vector<std::string> data;
  TestLayer t = SameSizeFiles(6, 200 << 10, 40, &data);
  TestBlob b = t.Build();
  auto src = std::make_shared<SlowSource>(b.blob);
  auto r = LayerReader::Open(src, {});
  EXPECT_TRUE(r.ok()) << r.status();
  std::shared_ptr<const LayerReader> reader = std::move(*r);
  CachedLayerOptions o;
  o.readahead_chunks = 0;
  o.max_fill_bytes = max_fill_bytes;
  o.huge_fill_bytes = huge_fill_bytes;
  CachedLayer layer(reader, std::make_shared<MemoryChunkCache>(0), o);
  const int before = src->max_concurrent();  // opening read the TOC
  EXPECT_EQ(before, 1);
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int i = 0; i < 6; ++i) {
    ts.emplace_back([&, i] {
      auto ino = reader->index().Resolve(absl::StrCat("f", i));
      if (priority != ReadPriority::kOnDemand &&
          !layer.Fill(reader->index().inode(*ino).first_chunk, priority).ok()) {
        ++bad;
      }
      std::string out(200 << 10, '\0');
      auto n = layer.Read(*ino, 0, absl::MakeSpan(out));
      if (!n.ok() || out != data[i]) ++bad;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  return src->max_concurrent();
}

TEST(CachedLayerTest, FillMemoryIsCapped) {
  // Each prefetch fill holds ~400 KiB (extent + chunk): a 1 MiB cap lets
  // two run, a tiny one exactly one (it never blocks a lone fill), no cap
  // all six.
  EXPECT_EQ(MaxConcurrentFills(1), 1);
  EXPECT_EQ(MaxConcurrentFills(1 << 20), 2);
  EXPECT_GT(MaxConcurrentFills(0), 2);
  // On-demand fills (a process waits) are never held back by the cap.
  EXPECT_GT(MaxConcurrentFills(1, ReadPriority::kOnDemand), 1);
  // ...but huge ones (here: over 100 KiB) run one at a time, on-demand or
  // not: five first reads of 1 GiB chunks held 8.4 GB at once.
  EXPECT_EQ(MaxConcurrentFills(0, ReadPriority::kOnDemand, 100 << 10), 1);
  EXPECT_EQ(MaxConcurrentFills(1 << 30, ReadPriority::kPrefetch, 100 << 10), 1);
}

TEST(CachedLayerTest, ConcurrentMissesShareOneFill) {
  const std::string big = Random(1 << 20, 1);
  TestBlob b = TestLayer().AddFile("big", big).Build();
  CachedLayerOptions o;
  o.readahead_chunks = 0;
  Fixture f(b.blob, o);
  const uint32_t ino = f.Inode("big");
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      std::string out(4096, '\0');
      uint64_t off = static_cast<uint64_t>(t) * 100000;
      auto n = f.layer->Read(ino, off, absl::MakeSpan(out));
      if (!n.ok() || out != big.substr(off, 4096)) ++bad;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(f.source->reads(), 1u) << "one fill for the one chunk";
  EXPECT_EQ(f.layer->stats().fills, 1u);
  // Served from the cache from now on.
  EXPECT_EQ(f.ReadAll(ino), big);
  EXPECT_EQ(f.source->reads(), 1u);
}

TEST(CachedLayerTest, SmallFilesSharingAMemberCostOneInflate) {
  // One gzip member holds both payloads: b's bytes start at innerOffset
  // 1024 (a's 5 bytes padded to 512, then b's header).
  using namespace testing;
  std::string m0 = GzipMember(TarHeader("a", '0', 5));
  std::string member1 = GzipMember(absl::StrCat(
      "hello", TarPadding(5), TarHeader("b", '0', 5), "world", TarPadding(5)));
  const uint64_t off = m0.size();
  auto entry = [&](const char* name, const char* data, uint64_t inner) {
    const std::string d = Sha256::Of(data).ToString();
    return absl::StrCat(R"({"name":")", name,
                        R"(","type":"reg","size":5,"offset":)", off,
                        R"(,"innerOffset":)", inner, R"(,"digest":")", d,
                        R"(","chunkDigest":")", d, R"("})");
  };
  std::string toc =
      absl::StrCat(R"({"version":1,"entries":[)", entry("a", "hello", 0), ",",
                   entry("b", "world", 1024), "]}");
  Fixture f(AssembleEstargz(m0 + member1, toc));
  EXPECT_EQ(f.ReadAll(f.Inode("a")), "hello");
  EXPECT_EQ(f.ReadAll(f.Inode("b")), "world");
  EXPECT_EQ(f.source->reads(), 1u);
  EXPECT_EQ(f.layer->stats().fills, 1u);
  EXPECT_EQ(f.layer->stats().cache_hits, 1u);  // b came with a's fill
}

// A zeros chunk (zstd:chunked's chunkType "zeros") is never filled: a TOC
// may declare any size (a 64 GiB one made every read allocate it, and the
// serving process died of std::bad_alloc). Its digest, when it has one, is
// still checked.
TEST(CachedLayerTest, ZerosChunksOfAnySizeAreReadWithoutAllocatingThem) {
  using namespace testing;
  const std::string data = "data";
  auto toc = [&](const std::string& zeros_digest) {
    return absl::StrCat(
        R"({"version":1,"entries":[)",
        R"({"name":"d","type":"reg","size":4,"offset":0,"innerOffset":512,)",
        R"("digest":")", Sha256::Of(data).ToString(), R"(","chunkDigest":")",
        Sha256::Of(data).ToString(), R"("},)",
        R"({"name":"z","type":"reg","size":68719476736,"offset":0,)",
        R"("chunkType":"zeros")", zeros_digest, "}]}");
  };
  const std::string payload = ZstdFrame(TarHeader("d", '0', 4) + data);
  Fixture f(AssembleZstdChunked(payload, toc("")));
  std::string out(16, 'x');
  absl::StatusOr<size_t> n =
      f.layer->Read(f.Inode("z"), uint64_t{1} << 35, absl::MakeSpan(out));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 16u);
  EXPECT_EQ(out, std::string(16, '\0'));
  EXPECT_EQ(f.Read("d"), "data");
  // A small zeros chunk whose digest is not that of its zeros: DataLoss.
  const std::string bad = absl::StrCat(
      R"({"version":1,"entries":[{"name":"z","type":"reg","size":8,)",
      R"("offset":0,"chunkType":"zeros","chunkDigest":")",
      Sha256::Of("12345678").ToString(), R"("}]})");
  Fixture g(AssembleZstdChunked(payload, bad));
  n = g.layer->Read(g.Inode("z"), 0, absl::MakeSpan(out));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss) << n.status();
  // A huge one with a digest: not hashed (2^49 bytes of zeros took a thread
  // days; a sparse file's hole of hundreds of GB, minutes): its bytes are
  // what the verified TOC says.
  const absl::Time start = absl::Now();
  Fixture h(AssembleZstdChunked(
      payload,
      absl::StrCat(R"({"version":1,"entries":[{"name":"z","type":"reg",)",
                   R"("size":562949953421312,"offset":0,"chunkType":"zeros",)",
                   R"("chunkDigest":")", Sha256::Of("1").ToString(),
                   R"("}]})")));
  n = h.layer->Read(h.Inode("z"), uint64_t{1} << 48, absl::MakeSpan(out));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(out, std::string(16, '\0'));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(CachedLayerTest, ABadNeighbourInTheSameMemberFailsAlone) {
  using namespace testing;
  std::string m0 = GzipMember(TarHeader("a", '0', 5));
  std::string member1 = GzipMember(absl::StrCat(
      "hello", TarPadding(5), TarHeader("b", '0', 5), "world", TarPadding(5)));
  const std::string ha = Sha256::Of("hello").ToString();
  const std::string hb = Sha256::Of("WORLD").ToString();  // lies about b
  std::string toc = absl::StrCat(
      R"({"version":1,"entries":[{"name":"a","type":"reg","size":5,"offset":)",
      m0.size(), R"(,"digest":")", ha, R"(","chunkDigest":")", ha,
      R"("},{"name":"b","type":"reg","size":5,"offset":)", m0.size(),
      R"(,"innerOffset":1024,"digest":")", hb, R"(","chunkDigest":")", hb,
      R"("}]})");
  Fixture f(AssembleEstargz(m0 + member1, toc));
  std::string out(5, '\0');
  auto rb = f.layer->Read(f.Inode("b"), 0, absl::MakeSpan(out));
  EXPECT_EQ(rb.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(f.ReadAll(f.Inode("a")), "hello");
  EXPECT_EQ(f.source->reads(), 1u);
}

TEST(CachedLayerTest, SpansFetchManyMembersPerRead) {
  TestLayer t;
  std::vector<std::string> data;
  for (int i = 0; i < 40; ++i) {
    data.push_back(Random(3000 + 100 * i, 100 + i));
    t.AddFile(absl::StrCat("d/f", i), data.back());
  }
  TestBlob b = t.Build();
  // Corrupt file 17's member: its span fails for it alone.
  std::string blob = b.blob;
  Fixture probe(b.blob);
  const uint32_t bad_ino = probe.Inode("d/f17");
  const Chunk bad =
      probe.reader->index()
          .chunks()[probe.reader->index().inode(bad_ino).first_chunk];
  blob[(bad.blob_offset + bad.blob_end) / 2] ^= 0x40;

  CachedLayerOptions o;
  o.readahead_chunks = 0;
  Fixture f(blob, o);
  const std::vector<uint32_t> all = f.AllChunks();
  const auto spans = f.layer->PlanSpans(all, 32 << 10, 4096);
  ASSERT_GT(spans.size(), 1u);
  EXPECT_LT(spans.size(), 20u);
  for (size_t i = 1; i < spans.size(); ++i) {
    EXPECT_LE(spans[i - 1].end, spans[i].begin);
    EXPECT_LE(spans[i].end - spans[i].begin, uint64_t{32 << 10});
  }
  int failed = 0;
  for (const auto& sp : spans) {
    absl::Status st = f.layer->FillSpan(sp, ReadPriority::kBackground);
    if (!st.ok()) {
      ++failed;
      EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    }
  }
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(f.source->reads(), spans.size());
  EXPECT_FALSE(f.cache->Contains(bad.digest));
  // Everything else is cached: reading it costs no source read.
  for (int i = 0; i < 40; ++i) {
    if (i == 17) continue;
    EXPECT_EQ(f.ReadAll(f.Inode(absl::StrCat("d/f", i))), data[i]) << i;
  }
  EXPECT_EQ(f.source->reads(), spans.size());
  std::string out(100, '\0');
  EXPECT_FALSE(f.layer->Read(f.Inode("d/f17"), 0, absl::MakeSpan(out)).ok());
  // Planned again: only the bad member is left.
  const auto again = f.layer->PlanSpans(all, 32 << 10, 4096);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].begin, bad.blob_offset);
}

TEST(CachedLayerTest, SpanSkipsMembersCachedSinceItWasPlanned) {
  std::vector<std::string> data;  // random: stored, ~20 KB each
  TestLayer t = SameSizeFiles(30, 20000, 300, &data);
  CachedLayerOptions o;
  o.readahead_chunks = 0;
  Fixture f(t.Build().blob, o);
  const std::vector<uint32_t> all = f.AllChunks();
  const auto spans = f.layer->PlanSpans(all, 8 << 20, 1024);
  ASSERT_EQ(spans.size(), 1u);
  // On-demand reads of files 10..19 after planning: the span's fetch
  // leaves that hole out (two reads, about 2/3 of the bytes).
  for (int i = 10; i < 20; ++i) {
    EXPECT_EQ(f.ReadAll(f.Inode(absl::StrCat("f", i))), data[i]);
  }
  const uint64_t reads = f.source->reads(), bytes = f.source->bytes_read();
  ASSERT_TRUE(f.layer->FillSpan(spans[0], ReadPriority::kBackground).ok());
  EXPECT_EQ(f.source->reads() - reads, 2u);
  const uint64_t span_bytes = spans[0].end - spans[0].begin;
  EXPECT_LT(f.source->bytes_read() - bytes, span_bytes * 3 / 4);
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(f.ReadAll(f.Inode(absl::StrCat("f", i))), data[i]) << i;
  }
  EXPECT_EQ(f.source->reads() - reads, 2u) << "everything was cached";
}

// A source that hands out the first half of each read, reports it, and
// holds the rest back until released: a span's bytes arriving over time.
class HalfThenWaitSource : public BlobSource {
 public:
  explicit HalfThenWaitSource(std::string blob) : inner_(std::move(blob)) {}
  uint64_t size() const override { return inner_.size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority p) override {
    ++plain_reads_;
    return inner_.ReadAt(offset, dst, p);
  }
  absl::Status ReadAtStreaming(
      uint64_t offset, absl::Span<char> dst, ReadPriority p,
      const std::function<void(size_t)>& progress) override {
    ++streaming_reads_;
    const size_t half = dst.size() / 2;
    RETURN_IF_ERROR(inner_.ReadAt(offset, dst.subspan(0, half), p));
    progress(half);
    paused_.Notify();
    release_.WaitForNotification();
    return inner_.ReadAt(offset + half, dst.subspan(half), p);
  }
  using BlobSource::ReadAt;
  std::string Describe() const override { return "half, then wait"; }

  absl::Notification paused_, release_;
  std::atomic<int> plain_reads_{0}, streaming_reads_{0};

 private:
  MemoryBlobSource inner_;
};

// A span's members are decoded, verified and cached as their bytes arrive:
// a reader of one near its start gets it while the rest is still on the
// way (a process starting while its prefetch range streams in).
TEST(CachedLayerTest, SpanMembersServeReadersAsTheirBytesArrive) {
  std::vector<std::string> data;
  TestLayer t = SameSizeFiles(30, 20000, 500, &data);
  const TestBlob b = t.Build();
  auto src = std::make_shared<HalfThenWaitSource>(b.blob);
  auto r = LayerReader::Open(src, {});
  ASSERT_TRUE(r.ok()) << r.status();
  std::shared_ptr<const LayerReader> reader = std::move(*r);
  CachedLayerOptions o;
  o.readahead_chunks = 0;
  auto cache = std::make_shared<MemoryChunkCache>(0);
  CachedLayer layer(reader, cache, o);
  std::vector<uint32_t> all(reader->index().chunks().size());
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto spans = layer.PlanSpans(all, 8 << 20, 1024);
  ASSERT_EQ(spans.size(), 1u);
  const int plain_before = src->plain_reads_.load();

  absl::Status span_st;
  std::thread filler(
      [&] { span_st = layer.FillSpan(spans[0], ReadPriority::kPrefetch); });
  src->paused_.WaitForNotification();
  // File 0's member lies in the first half: read while the span waits.
  std::promise<std::string> first;
  std::future<std::string> got = first.get_future();
  std::thread reader_thread([&] {
    auto ino = reader->index().Resolve("f0");
    std::string out(data[0].size(), '\0');
    auto n = layer.Read(*ino, 0, absl::MakeSpan(out));
    first.set_value(n.ok() ? out : n.status().ToString());
  });
  const bool in_time =
      got.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  src->release_.Notify();  // whatever happened, let everything finish
  reader_thread.join();
  filler.join();
  ASSERT_TRUE(in_time) << "the read waited for the whole span";
  EXPECT_TRUE(got.get() == data[0]);
  EXPECT_TRUE(span_st.ok()) << span_st;
  // Nothing was read twice: the reader took the span's bytes.
  EXPECT_EQ(src->plain_reads_.load(), plain_before);
  EXPECT_EQ(src->streaming_reads_.load(), 1);
  for (int i = 0; i < 30; ++i) {
    auto ino = reader->index().Resolve(absl::StrCat("f", i));
    std::string out(data[i].size(), '\0');
    ASSERT_TRUE(layer.Read(*ino, 0, absl::MakeSpan(out)).ok());
    EXPECT_TRUE(out == data[i]) << i;
  }
  EXPECT_EQ(src->plain_reads_.load(), plain_before) << "all were cached";
}

TEST(CachedLayerTest, CorruptChunkFailsAndIsNeverCached) {
  const std::string data = Random(200000, 2);
  TestBlob b = TestLayer().AddFile("f", data, 65536).Build();
  // Flip a byte inside chunk 1's compressed member (random data: stored).
  std::string blob = b.blob;
  const auto& c1 = b.chunks[1];
  blob[(c1.blob_offset + c1.blob_end) / 2] ^= 0x40;
  Fixture f(blob);
  const uint32_t ino = f.Inode("f");
  std::string out(1000, '\0');
  auto bad = f.layer->Read(ino, 70000, absl::MakeSpan(out));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("\"f\""), std::string::npos)
      << bad.status();
  EXPECT_FALSE(f.cache->Contains(c1.digest));
  // The other chunks still read right.
  auto good = f.layer->Read(ino, 1000, absl::MakeSpan(out));
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(out, data.substr(1000, 1000));
  auto tail = f.layer->Read(ino, 150000, absl::MakeSpan(out));
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(out, data.substr(150000, 1000));
}

TEST(CachedLayerTest, SequentialReaderTriggersReadAhead) {
  const std::string data = Random(8 * 65536, 3);
  TestBlob b = TestLayer().AddFile("f", data, 65536).Build();
  CachedLayerOptions o;
  o.readahead_chunks = 3;
  Fixture f(b.blob, o);
  const uint32_t ino = f.Inode("f");
  std::string out(65536, '\0');
  ASSERT_TRUE(f.layer->Read(ino, 0, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, data.substr(0, 65536));
  // Chunks 1..3 arrive in the background.
  for (int i = 0; i < 200 && !(f.cache->Contains(b.chunks[1].digest) &&
                               f.cache->Contains(b.chunks[3].digest));
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(f.cache->Contains(b.chunks[1].digest));
  EXPECT_TRUE(f.cache->Contains(b.chunks[3].digest));
  EXPECT_FALSE(f.cache->Contains(b.chunks[6].digest));
  EXPECT_EQ(f.ReadAll(ino), data);
  EXPECT_EQ(f.layer->fetched_blob_bytes(), f.source->bytes_read());
}

// A miss fetches the other files of its directory (not its subdirectories,
// not other directories), once per directory, within the size cap. (a/sub/w
// lies between a/y and a/z in the blob and is larger than the 64 KiB gap a
// span may run across, so the span stops before it.)
TEST(CachedLayerTest, MissPrefetchesItsDirectory) {
  TestBlob b = TestLayer()
                   .AddDir("a")
                   .AddFile("a/x", Random(20000, 10))
                   .AddFile("a/y", Random(20000, 11))
                   .AddDir("a/sub")
                   .AddFile("a/sub/w", Random(100000, 12))
                   .AddFile("a/z", Random(20000, 13))
                   .AddDir("b")
                   .AddFile("b/v", Random(20000, 14))
                   .AddDir("big")
                   .AddFile("big/1", Random(300000, 15))
                   .AddFile("big/2", Random(300000, 16))
                   .AddDir("many")
                   .AddFile("many/1", Random(100000, 17))
                   .AddFile("many/2", Random(100000, 18))
                   .AddFile("many/3", Random(100000, 19))
                   .AddFile("many/4", Random(100000, 20))
                   .AddDir("mixed")
                   .AddFile("mixed/a", Random(20000, 21))
                   .AddFile("mixed/huge", Random(280000, 22))
                   .AddFile("mixed/s", Random(20000, 23))
                   .Build();
  auto cached = [](Fixture& f, const char* path) {
    return f.cache->Contains(
        f.reader->index().FileChunks(f.Inode(path))[0].digest);
  };
  auto eventually = [&](Fixture& f, const char* path) {
    for (int i = 0; i < 500 && !cached(f, path); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return cached(f, path);
  };
  CachedLayerOptions o;
  o.readahead_chunks = 0;
  {
    // Off by default: a miss fetches only what it reads.
    Fixture f(b.blob, o);
    f.ReadAll(f.Inode("a/x"));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(cached(f, "a/y"));
    EXPECT_EQ(f.layer->stats().dir_prefetches, 0u);
  }
  o.dir_prefetch_bytes = 256 << 10;
  Fixture f(b.blob, o);
  EXPECT_EQ(f.ReadAll(f.Inode("a/x")), Random(20000, 10));
  EXPECT_TRUE(eventually(f, "a/y"));
  EXPECT_TRUE(eventually(f, "a/z"));
  EXPECT_EQ(f.layer->stats().dir_prefetches, 1u);
  // Once the source is idle (no read for 200 ms), nothing else came.
  for (uint64_t seen = ~0ull; seen != f.source->reads();) {
    seen = f.source->reads();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_FALSE(cached(f, "a/sub/w"));
  EXPECT_FALSE(cached(f, "b/v"));
  // What the directory prefetch brought is served without a source read.
  const uint64_t reads = f.source->reads();
  EXPECT_EQ(f.ReadAll(f.Inode("a/z")), Random(20000, 13));
  EXPECT_EQ(f.source->reads(), reads);
  // A file bigger than the cap (280 kB, incompressible) is left out, and its
  // small sibling still comes (the directory, 320 kB, is within twice the
  // cap; with the big file counted, its spans would pass the cap and
  // nothing would).
  EXPECT_EQ(f.ReadAll(f.Inode("mixed/a")), Random(20000, 21));
  EXPECT_TRUE(eventually(f, "mixed/s"));
  for (uint64_t seen = ~0ull; seen != f.source->reads();) {
    seen = f.source->reads();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_FALSE(cached(f, "mixed/huge"));
  EXPECT_EQ(f.layer->stats().dir_prefetches, 2u);
  // A directory whose only other file is over the cap gets nothing...
  EXPECT_EQ(f.ReadAll(f.Inode("big/1")), Random(300000, 15));
  // ...and so does a directory whose other files pass it together (3 x 100
  // kB): nothing more is fetched.
  EXPECT_EQ(f.ReadAll(f.Inode("many/1")), Random(100000, 17));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(cached(f, "big/2"));
  EXPECT_FALSE(cached(f, "many/2"));
  EXPECT_FALSE(cached(f, "many/4"));
  EXPECT_EQ(f.layer->stats().dir_prefetches, 2u);
}

// A source whose reads for anything but a blocked reader fail, once
// released, while `fail` is set: a prefetch or background span that the
// registry fails (after the transport's own retries).
class NonUrgentFailsSource : public BlobSource {
 public:
  explicit NonUrgentFailsSource(std::string blob) : inner_(std::move(blob)) {}
  uint64_t size() const override { return inner_.size(); }
  absl::Status ReadAt(uint64_t offset, absl::Span<char> dst,
                      ReadPriority p) override {
    if (p != ReadPriority::kOnDemand && fail.load()) {
      ++failed;
      if (!paused.HasBeenNotified()) paused.Notify();
      release.WaitForNotification();
      return absl::UnavailableError("injected: 503 after every retry");
    }
    if (p == ReadPriority::kOnDemand) ++on_demand_reads;
    return inner_.ReadAt(offset, dst, p);
  }
  using BlobSource::ReadAt;
  std::string Describe() const override { return "non-urgent reads fail"; }

  std::atomic<bool> fail{false};
  absl::Notification paused, release;
  std::atomic<int> failed{0}, on_demand_reads{0};

 private:
  MemoryBlobSource inner_;
};

// A blocked reader that joined a directory prefetch's span does not inherit
// its failure: it fetches its file itself, once.
TEST(CachedLayerTest, AReaderWhosePrefetchFailedTriesItself) {
  TestBlob b = TestLayer()
                   .AddDir("d")
                   .AddFile("d/x", Random(20000, 30))
                   .AddFile("d/y", Random(20000, 31))
                   .AddFile("d/z", Random(20000, 32))
                   .Build();
  auto src = std::make_shared<NonUrgentFailsSource>(b.blob);
  auto r = LayerReader::Open(src, {});
  ASSERT_TRUE(r.ok()) << r.status();
  std::shared_ptr<const LayerReader> reader = std::move(*r);
  CachedLayerOptions o;
  o.readahead_chunks = 0;
  o.dir_prefetch_bytes = 256 << 10;
  CachedLayer layer(reader, std::make_shared<MemoryChunkCache>(0), o);
  auto read = [&](const char* path, std::string* out) {
    const uint32_t ino = *reader->index().Resolve(path);
    out->assign(reader->index().inode(ino).size, '\0');
    return layer.Read(ino, 0, absl::MakeSpan(*out)).status();
  };
  src->fail = true;
  std::string x, y;
  ASSERT_TRUE(read("d/x", &x).ok());
  EXPECT_EQ(x, Random(20000, 30));
  // The miss prefetches d/y and d/z in one span, which is held, then fails.
  ASSERT_TRUE(src->paused.WaitForNotificationWithTimeout(absl::Seconds(10)));
  const int before = src->on_demand_reads.load();
  absl::Status got;
  std::thread t([&] { got = read("d/y", &y); });
  // The reader waits for the span holding its file.
  for (int i = 0; i < 1000 && layer.stats().joined_fills == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(layer.stats().joined_fills, 1u);
  EXPECT_EQ(src->on_demand_reads.load(), before);
  src->release.Notify();
  t.join();
  EXPECT_TRUE(got.ok()) << got;
  EXPECT_TRUE(y == Random(20000, 31));
  EXPECT_EQ(src->failed.load(), 1);
  EXPECT_EQ(src->on_demand_reads.load(), before + 1) << "one retry of its own";
}

TEST(CachedLayerTest, ManyReadersRandomRangesByteExact) {
  const std::string d1 = Random(300000, 4), d2 = Random(77777, 5);
  TestBlob b =
      TestLayer().AddFile("one", d1, 32768).AddFile("two", d2, 10000).Build();
  Fixture f(b.blob);
  const uint32_t i1 = f.Inode("one"), i2 = f.Inode("two");
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int k = 0; k < 200; ++k) {
        const bool first = rng() % 2;
        const std::string& d = first ? d1 : d2;
        uint64_t off = rng() % d.size();
        std::string out(1 + rng() % 70000, '\0');
        auto n = f.layer->Read(first ? i1 : i2, off, absl::MakeSpan(out));
        size_t want = std::min(out.size(), d.size() - off);
        if (!n.ok() || *n != want ||
            out.substr(0, want) != d.substr(off, want)) {
          ++bad;
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
}

// Stream tests: no read-ahead (every fill is one the test made).
struct StreamFixture : BasicFixture<StreamSource> {
  static CachedLayerOptions NoReadAhead() {
    CachedLayerOptions o;
    o.readahead_chunks = 0;
    return o;
  }
  explicit StreamFixture(const std::string& blob)
      : BasicFixture(blob, NoReadAhead()) {}
  StreamFixture(const std::string& blob, absl::Duration claim_wait)
      : BasicFixture(blob, [&] {
          CachedLayerOptions o = NoReadAhead();
          o.claim_wait = claim_wait;
          return o;
        }()) {}
};

// Background fetch as a stream: one stream per stretch (a hole of cached
// members wider than the stream gap starts another), no ReadAt at all,
// every member but a corrupt one cached, the corrupt one's error returned.
TEST(CachedLayerTest, AStreamFillsEveryMemberWithOneReadPerStretch) {
  TestLayer t;
  std::vector<std::string> data;
  for (int i = 0; i < 60; ++i) {
    data.push_back(Random(5000 + 37 * i, 700 + i));
    t.AddFile(absl::StrCat("f", i), data.back());
  }
  std::string blob = t.Build().blob;
  StreamFixture probe(blob);
  const LayerIndex& pidx = probe.reader->index();
  const Chunk bad = pidx.chunks()[pidx.inode(*pidx.Resolve("f41")).first_chunk];
  blob[(bad.blob_offset + bad.blob_end) / 2] ^= 0x40;

  StreamFixture f(blob);
  // Files 20..29 cached first: a hole in the middle.
  for (int i = 20; i < 30; ++i) {
    EXPECT_EQ(f.Read(absl::StrCat("f", i)), data[i]);
  }
  const int reads_before = f.source->plain_reads_.load();
  const auto spans = f.layer->PlanSpans(f.AllChunks(), 16 << 10, 4096);
  ASSERT_GT(spans.size(), 4u);
  std::atomic<int> called{0};
  absl::Status st =
      f.layer->FillStream(spans, ReadPriority::kBackground, 2,
                          /*stream_gap=*/4096, /*max_stream=*/UINT64_MAX,
                          /*from=*/0, [&](const CachedLayer::Span&) {
                            ++called;
                            return absl::OkStatus();
                          });
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_EQ(called.load(), static_cast<int>(spans.size()));
  EXPECT_EQ(f.source->streams_.load(), 2) << "the hole splits the stream";
  EXPECT_EQ(f.source->plain_reads_.load(), reads_before);
  EXPECT_FALSE(f.cache->Contains(bad.digest));
  for (int i = 0; i < 60; ++i) {
    if (i == 41) continue;
    EXPECT_EQ(f.Read(absl::StrCat("f", i)), data[i]) << i;
  }
  EXPECT_EQ(f.source->plain_reads_.load(), reads_before) << "all cached";

  // With a gap wider than the hole: one stream, the hole read and dropped.
  StreamFixture g(blob);
  for (int i = 20; i < 30; ++i) (void)g.Read(absl::StrCat("f", i));
  const auto gspans = g.layer->PlanSpans(g.AllChunks(), 16 << 10, 4096);
  (void)g.layer->FillStream(
      gspans, ReadPriority::kBackground, 1, 1 << 20, UINT64_MAX, 0,
      [](const CachedLayer::Span&) { return absl::OkStatus(); });
  EXPECT_EQ(g.source->streams_.load(), 1);
  // (From byte 0, `from`, though the first span starts after it.)
  ASSERT_GT(gspans.front().begin, 0u);
  EXPECT_EQ(g.source->streamed_.load(), gspans.back().end);

  // Streams no longer than `max_stream` (whole spans, one at least).
  StreamFixture h(blob);
  for (int i = 20; i < 30; ++i) (void)h.Read(absl::StrCat("f", i));
  (void)h.layer->FillStream(
      gspans, ReadPriority::kBackground, 1, 1 << 20, 64 << 10, 0,
      [](const CachedLayer::Span&) { return absl::OkStatus(); });
  EXPECT_GE(h.source->streams_.load(),
            static_cast<int>(gspans.back().end / (64 << 10)));
  EXPECT_LE(h.source->streams_.load(), static_cast<int>(gspans.size()));
  // (Holes between stretches are not read.)
  uint64_t span_bytes = 0;
  for (const auto& sp : gspans) span_bytes += sp.end - sp.begin;
  EXPECT_GE(h.source->streamed_.load(), span_bytes);
  EXPECT_LE(h.source->streamed_.load(), gspans.back().end);
  for (int i = 0; i < 60; ++i) {
    if (i != 41) {
      EXPECT_EQ(h.Read(absl::StrCat("f", i)), data[i]) << i;
    }
  }
}

// A stream that breaks stops the fill there: what it brought is cached,
// the rest is left for FillSpan, and the error is returned; a stop asked
// for between spans ends it too.
TEST(CachedLayerTest, AStreamThatBreaksLeavesTheRestToSpans) {
  std::vector<std::string> data;
  TestLayer t = SameSizeFiles(40, 6000, 900, &data);
  const std::string blob = t.Build().blob;
  StreamFixture f(blob);
  const auto spans = f.layer->PlanSpans(f.AllChunks(), 16 << 10, 4096);
  ASSERT_GT(spans.size(), 4u);
  f.source->fail_after_ = (spans.back().end - spans.front().begin) / 2;
  absl::Status st = f.layer->FillStream(
      spans, ReadPriority::kBackground, 2, 1 << 20, UINT64_MAX, 0,
      [](const CachedLayer::Span&) { return absl::OkStatus(); });
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
  EXPECT_NE(st.message().find("connection dropped"), std::string::npos) << st;
  const auto left = f.layer->PlanSpans(f.AllChunks(), 16 << 10, 4096);
  EXPECT_GT(left.size(), 0u);
  EXPECT_LT(left.size(), spans.size()) << "the first half was cached";
  for (const auto& sp : left) {
    ASSERT_TRUE(f.layer->FillSpan(sp, ReadPriority::kBackground).ok());
  }
  const int plain = f.source->plain_reads_.load();
  EXPECT_EQ(plain, static_cast<int>(left.size()));
  for (int i = 0; i < 40; ++i) {
    EXPECT_EQ(f.Read(absl::StrCat("f", i)), data[i]) << i;
  }
  EXPECT_EQ(f.source->plain_reads_.load(), plain);

  StreamFixture g(blob);
  int n = 0;
  st = g.layer->FillStream(spans, ReadPriority::kBackground, 2, 1 << 20,
                           UINT64_MAX, 0, [&](const CachedLayer::Span&) {
                             return ++n > 2 ? absl::CancelledError("stop")
                                            : absl::OkStatus();
                           });
  EXPECT_EQ(st.code(), absl::StatusCode::kCancelled) << st;
  EXPECT_EQ(g.layer->PlanSpans(g.AllChunks(), 16 << 10, 4096).size(),
            spans.size() - 2);
}

// Reads that outran the stream cached what it is about to bring again:
// past its allowance (here 1 MiB; and a sixteenth of what it read) it gives
// way, Aborted, and
// FillSpan, which skips them, fetches only what is still missing. Members
// cached before it started (inside its spans, across gaps) do not count.
TEST(CachedLayerTest, AStreamGivesWayToReadsThatRunAheadOfIt) {
  std::vector<std::string> data;
  TestLayer t = SameSizeFiles(60, 40000, 1100, &data);
  StreamFixture f(t.Build().blob);
  const auto spans = f.layer->PlanSpans(f.AllChunks(), 64 << 10, 4096);
  // A stream over `fx`'s layer with 40 files (1.6 MB) read ahead of it as
  // it starts, giving way past `allowance` bytes.
  auto overtaken = [&](StreamFixture& fx, bool* gave_way, uint64_t allowance) {
    bool ran_ahead = false;
    return fx.layer->FillStream(
        spans, ReadPriority::kBackground, 2, 1 << 20, UINT64_MAX, 0,
        [&](const CachedLayer::Span&) {
          for (int i = 10; i < 50 && !ran_ahead; ++i) {
            EXPECT_EQ(fx.Read(absl::StrCat("f", i)), data[i]);
          }
          ran_ahead = true;
          return absl::OkStatus();
        },
        gave_way, allowance);
  };
  absl::Status st = overtaken(f, nullptr, 1 << 20);
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_LT(f.source->streamed_.load(), spans.back().end - spans.front().begin);
  for (const auto& sp : f.layer->PlanSpans(f.AllChunks(), 64 << 10, 4096)) {
    ASSERT_TRUE(f.layer->FillSpan(sp, ReadPriority::kBackground).ok());
  }
  for (int i = 0; i < 60; ++i) {
    EXPECT_EQ(f.Read(absl::StrCat("f", i)), data[i]) << i;
  }
  // With a larger allowance than those 1.6 MB, it reads through them.
  StreamFixture h(t.Build().blob);
  bool gave_way = true;
  st = overtaken(h, &gave_way, 4 << 20);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_FALSE(gave_way);
  EXPECT_EQ(h.source->streams_.load(), 1);
  for (int i = 0; i < 60; ++i) {
    EXPECT_EQ(h.Read(absl::StrCat("f", i)), data[i]) << i;
  }
  // With every other file read before it starts (so its spans, merged
  // across them, bring them again) the stream runs to the end.
  StreamFixture g(t.Build().blob);
  for (int i = 0; i < 60; i += 2) {  // 1.2 MB
    EXPECT_EQ(g.Read(absl::StrCat("f", i)), data[i]);
  }
  const auto gspans = g.layer->PlanSpans(g.AllChunks(), 1 << 20, 64 << 10);
  ASSERT_LT(gspans.size(), 5u) << "spans merged across the cached files";
  const int reads = g.source->plain_reads_.load();
  EXPECT_TRUE(g.layer
                  ->FillStream(
                      gspans, ReadPriority::kBackground, 2, 1 << 20, UINT64_MAX,
                      0,
                      [](const CachedLayer::Span&) { return absl::OkStatus(); })
                  .ok());
  EXPECT_EQ(g.source->streams_.load(), 1);
  EXPECT_EQ(g.source->plain_reads_.load(), reads);
  for (int i = 0; i < 60; ++i) {
    EXPECT_EQ(g.Read(absl::StrCat("f", i)), data[i]) << i;
  }
}

// A reader that reaches the span after the one the stream is reading (as a
// program walking the tree in the layer's order keeps doing) waits for the
// stream's bytes rather than fetching them again: the stream claimed that
// span's members ahead. Claims a stream ends without taking up are released
// (the waiting reader then fetches for itself).
TEST(CachedLayerTest, AStreamClaimsTheNextSpanAhead) {
  std::vector<std::string> data;
  TestLayer t = SameSizeFiles(40, 6000, 1300, &data);
  const std::string blob = t.Build().blob;
  // The first file whose member lies in span `sp`.
  auto file_in = [&](StreamFixture& fx, const CachedLayer::Span& sp) {
    const LayerIndex& idx = fx.reader->index();
    for (int i = 0; i < 40; ++i) {
      const Chunk& c =
          idx.chunks()[idx.inode(*idx.Resolve(absl::StrCat("f", i)))
                           .first_chunk];
      if (c.blob_offset >= sp.begin && c.blob_end <= sp.end) return i;
    }
    return -1;
  };
  // (claim: false is a stream that must not claim ahead, a rate-limited
  // one: the reader fetches for itself at once.)
  // (stall: the stream stays in before_span well past the reader's
  // claim_wait, which then fetches for itself.)
  struct Case {
    bool stop_there, claim, stall;
  };
  for (const Case& k : {Case{false, true, false}, Case{true, true, false},
                        Case{false, false, false}, Case{false, true, true}}) {
    const bool stop_there = k.stop_there;
    SCOPED_TRACE(!k.claim     ? "no claims"
                 : k.stall    ? "the stream stalls"
                 : stop_there ? "the stream stops before that span"
                              : "the stream reads on");
    StreamFixture f(blob, k.stall ? absl::Milliseconds(20) : absl::Seconds(30));
    const auto spans = f.layer->PlanSpans(f.AllChunks(), 16 << 10, 4096);
    ASSERT_GT(spans.size(), 4u);
    const int target = file_in(f, spans[1]);
    ASSERT_GE(target, 0);
    std::thread reader;
    std::string got;
    int calls = 0;
    absl::Status st = f.layer->FillStream(
        spans, ReadPriority::kBackground, 2, 1 << 20, UINT64_MAX, 0,
        [&](const CachedLayer::Span&) {
          // The second call comes before span 1 is read, which the stream
          // claimed while it read span 0.
          if (++calls != 2) return absl::OkStatus();
          const uint64_t joined = f.layer->stats().joined_fills;
          reader =
              std::thread([&] { got = f.Read(absl::StrCat("f", target)); });
          // Until the reader waits on the stream's claim, or fetches for
          // itself (or a while).
          for (int n = 0; n < 200 && f.layer->stats().joined_fills == joined &&
                          f.source->plain_reads_.load() == 0;
               ++n) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          }
          if (k.stall) {  // until the reader has its bytes
            for (int n = 0; n < 500 && f.source->plain_reads_.load() == 0;
                 ++n) {
              std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            if (f.source->plain_reads_.load() > 0) reader.join();
          }
          return stop_there ? absl::CancelledError("stop") : absl::OkStatus();
        },
        nullptr, CachedLayer::kStreamGiveWayBytes, k.claim);
    if (reader.joinable()) reader.join();
    EXPECT_EQ(got, data[target]);
    if (k.stall) {
      EXPECT_TRUE(st.ok()) << st;
      EXPECT_EQ(f.layer->stats().joined_fills, 1u);
      EXPECT_EQ(f.source->plain_reads_.load(), 1)
          << "past claim_wait the reader fetched for itself";
      continue;
    }
    if (!k.claim) {
      EXPECT_TRUE(st.ok()) << st;
      EXPECT_EQ(f.source->plain_reads_.load(), 1) << "it fetched for itself";
      continue;
    }
    EXPECT_EQ(f.layer->stats().joined_fills, 1u);
    if (stop_there) {
      EXPECT_EQ(st.code(), absl::StatusCode::kCancelled) << st;
      EXPECT_EQ(f.source->plain_reads_.load(), 1)
          << "released: the reader fetched for itself";
    } else {
      EXPECT_TRUE(st.ok()) << st;
      EXPECT_EQ(f.source->plain_reads_.load(), 0)
          << "the reader waited for the stream";
      EXPECT_EQ(f.source->streams_.load(), 1);
    }
  }
}

// A layer written with a min chunk size (small files sharing members, a big
// file's chunks sharing one): reads in any order, spans and a stream all
// serve exact bytes, and a member costs one read whichever of its files
// asks first.
TEST(CachedLayerTest, MembersSharedByManyFilesAsTheWriterMakesThem) {
  testing::TarBuilder tb;
  std::vector<std::pair<std::string, std::string>> files;
  for (int i = 0; i < 80; ++i) {
    files.emplace_back(absl::StrCat("lib/f", i), Random(100 + 61 * i, 900 + i));
  }
  files.emplace_back("bin/big", Random(40000, 999));
  for (const auto& [name, data] : files) tb.File(name, data);
  LayerWriterOptions wo;
  wo.chunk_size = 8192;          // the big file in 5 chunks ...
  wo.min_chunk_size = 32 << 10;  // ... sharing members with each other
  StringBlobSink sink;
  absl::StatusOr<LayerWriteResult> w = WriteLayer(tb.Finish(), wo, &sink);
  ASSERT_TRUE(w.ok()) << w.status();

  // Reads in a shuffled order: one source read per member.
  {
    Fixture f(sink.out, StreamFixture::NoReadAhead());
    std::vector<size_t> order(files.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), std::mt19937(7));
    for (size_t i : order) {
      EXPECT_EQ(f.Read(files[i].first), files[i].second) << files[i].first;
    }
    absl::flat_hash_set<uint64_t> members;
    for (const Chunk& c : f.reader->index().chunks()) {
      if (c.size > 0) members.insert(c.blob_offset);
    }
    EXPECT_LT(members.size(), 12u);
    EXPECT_EQ(f.source->reads(), members.size());
    // A read from the middle of a shared member's file, at an offset.
    std::string part(1000, '\0');
    auto n = f.layer->Read(f.Inode("bin/big"), 20000, absl::MakeSpan(part));
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(part, files.back().second.substr(20000, 1000));
  }
  // Background fetch's stream over spans of shared members.
  {
    StreamFixture f(sink.out);
    const auto spans = f.layer->PlanSpans(f.AllChunks(), 16 << 10, 4096);
    absl::Status st = f.layer->FillStream(
        spans, ReadPriority::kBackground, 1, 4096, UINT64_MAX, 0,
        [](const CachedLayer::Span&) { return absl::OkStatus(); });
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(f.source->streams_.load(), 1);
    for (const auto& [name, data] : files) EXPECT_EQ(f.Read(name), data);
    EXPECT_EQ(f.source->plain_reads_.load(), 0) << "all cached by the stream";
  }
}

}  // namespace
}  // namespace lazypull
