#include "core/layer_fill.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/layer_reader.h"
#include "core/memory_chunk_cache.h"
#include "core/testing/stream_source.h"
#include "core/testing/test_layer.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using testing::StreamSource;
using testing::TestLayer;

constexpr int kFiles = 60;

std::string Random(size_t n, int seed) { return testing::RandomBytes(n, seed); }

// A layer of 60 incompressible 40 kB files (2.4 MB) over a StreamSource and
// a memory cache, without read-ahead (every fill is one the test or the
// fill made).
struct Fixture {
  std::vector<std::string> data;
  std::shared_ptr<StreamSource> source;
  std::shared_ptr<const LayerReader> reader;
  std::unique_ptr<CachedLayer> layer;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> errors{0};

  Fixture() {
    TestLayer t;
    for (int i = 0; i < kFiles; ++i) {
      data.push_back(Random(40000, 300 + i));
      t.AddFile(absl::StrCat("f", i), data.back());
    }
    source = std::make_shared<StreamSource>(t.Build().blob);
    auto r = LayerReader::Open(source, {});
    EXPECT_TRUE(r.ok()) << r.status();
    reader = std::move(*r);
    CachedLayerOptions o;
    o.readahead_chunks = 0;
    layer = std::make_unique<CachedLayer>(
        reader, std::make_shared<MemoryChunkCache>(0), o);
    source->ResetCounters();
  }
  std::string Read(int i) {
    const auto ino = reader->index().Resolve(absl::StrCat("f", i));
    EXPECT_TRUE(ino.has_value()) << i;
    std::string out(reader->index().inode(*ino).size, '\0');
    auto n = layer->Read(*ino, 0, absl::MakeSpan(out));
    EXPECT_TRUE(n.ok()) << n.status();
    return out;
  }
  uint64_t FileOffset(int i) {
    const auto ino = reader->index().Resolve(absl::StrCat("f", i));
    return reader->index()
        .chunks()[reader->index().inode(*ino).first_chunk]
        .blob_offset;
  }
  // The end of the last member (the TOC and footer follow).
  uint64_t MembersEnd() const {
    uint64_t end = 0;
    for (const Chunk& c : reader->index().chunks()) {
      end = std::max<uint64_t>(end, c.blob_end);
    }
    return end;
  }
  std::vector<uint32_t> AllChunks() const {
    std::vector<uint32_t> all(reader->index().chunks().size());
    for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
    return all;
  }
  AdaptiveFill How() const {
    AdaptiveFill how;
    how.what = "test fill";
    how.span_threads = 2;
    how.stream_threads = 2;
    how.span_size = 64 << 10;
    how.gap = 4096;
    how.stream_give_way = 1 << 20;  // (the reads ahead below: 1.2-1.6 MB)
    return how;
  }
  void Fill(const AdaptiveFill& how) {
    FillAdaptive(layer.get(), AllChunks(), how, "layer", &stop, &errors);
  }
  // Every file reads right with the source refusing plain reads and
  // streams: the fill cached them all.
  void ExpectAllCached() {
    const int reads = source->plain_reads_.load();
    const int streams = source->streams_.load();
    for (int i = 0; i < kFiles; ++i) EXPECT_EQ(Read(i), data[i]) << i;
    EXPECT_EQ(source->plain_reads_.load(), reads) << "a file was not cached";
    EXPECT_EQ(source->streams_.load(), streams);
    EXPECT_EQ(errors.load(), 0u);
  }
};

TEST(LayerFillTest, ALinkNeverFastGoesInSpans) {
  Fixture f;
  AdaptiveFill how = f.How();
  how.link_rate = [] { return 1e12; };
  how.stream_rate = UINT64_MAX;
  f.Fill(how);
  EXPECT_EQ(f.source->streams_.load(), 0);
  EXPECT_GT(f.source->plain_reads_.load(), 10);
  f.ExpectAllCached();
}

// Spans while the link measures slow; once it measures fast, the rest is one
// stream.
TEST(LayerFillTest, SpansUntilTheLinkProvesFastThenOneStream) {
  Fixture f;
  AdaptiveFill how = f.How();
  how.span_threads = 1;
  std::atomic<int> probes{0};
  how.link_rate = [&probes] { return ++probes > 5 ? 30e6 : 1e6; };
  how.stream_rate = 24 << 20;
  f.Fill(how);
  EXPECT_EQ(f.source->streams_.load(), 1);
  EXPECT_GE(f.source->plain_reads_.load(), 4);
  EXPECT_LE(f.source->plain_reads_.load(), 6) << "spans after the switch";
  f.ExpectAllCached();
}

// A fast link from the start, but spans before `streams_from` (what a mount
// fetched ahead while indexing the TOC is found by them), eight at a time:
// every one of those is filled by its thread, whichever thread hands over
// first.
TEST(LayerFillTest, StreamsOnlyFromStreamsFrom) {
  for (int round = 0; round < 5; ++round) {
    Fixture f;
    AdaptiveFill how = f.How();
    how.span_threads = 8;
    how.stream_rate = 0;
    how.streams_from = f.FileOffset(30);
    f.Fill(how);
    EXPECT_EQ(f.source->streams_.load(), 1);
    EXPECT_GT(f.source->plain_reads_.load(), 0);
    EXPECT_LE(f.source->streamed_.load(), f.MembersEnd() - f.FileOffset(30))
        << "the stream brought what the spans had";
    f.ExpectAllCached();
  }
}

// Reads running ahead of the stream (files 10-49, 1.6 MB, read as it starts)
// make it give way once it reaches them; it starts again past them (files
// 50-59) rather than leaving the rest to spans, unless restarts are off.
TEST(LayerFillTest, AStreamOvertakenByReadsStartsAgainPastThem) {
  for (int restarts : {4, 0}) {
    SCOPED_TRACE(restarts);
    Fixture f;
    AdaptiveFill how = f.How();
    how.stream_rate = 0;
    how.stream_restarts = restarts;
    int reads_after_hook = -1;
    f.source->on_stream_start_ = [&](int stream) {
      if (stream != 1) return;
      for (int i = 10; i < 50; ++i) EXPECT_EQ(f.Read(i), f.data[i]) << i;
      reads_after_hook = f.source->plain_reads_.load();
    };
    f.Fill(how);
    ASSERT_GT(reads_after_hook, 0);
    if (restarts > 0) {
      EXPECT_EQ(f.source->streams_.load(), 2);
      EXPECT_EQ(f.source->plain_reads_.load(), reads_after_hook)
          << "spans filled what a new stream should have";
    } else {
      EXPECT_EQ(f.source->streams_.load(), 1);
      EXPECT_GT(f.source->plain_reads_.load(), reads_after_hook);
    }
    f.ExpectAllCached();
  }
}

// A new stream starts at the first member still missing, not back at the
// hashed prefix even when that is near: what lies between was taken by the
// reads it gave way to. (Files 10-39 read ahead; the first stream gives way
// among them; the hash is at file 38, two files before the first missing
// one, file 40: near enough for a first stream.)
TEST(LayerFillTest, ANewStreamDoesNotGoBackToTheHashedPrefix) {
  Fixture f;
  AdaptiveFill how = f.How();
  how.stream_rate = 0;
  const uint64_t hashed = f.FileOffset(38);
  how.hashed_prefix = [hashed] { return hashed; };
  uint64_t second_from = 0;
  f.source->on_stream_start_ = [&](int stream) {
    if (stream == 1) {
      for (int i = 10; i < 40; ++i) EXPECT_EQ(f.Read(i), f.data[i]) << i;
    } else if (stream == 2) {
      second_from = f.source->streamed_.load();
    }
  };
  f.Fill(how);
  ASSERT_EQ(f.source->streams_.load(), 2);
  EXPECT_LE(f.source->streamed_.load() - second_from,
            f.MembersEnd() - f.FileOffset(40))
      << "the second stream fetched files 38-39 again";
  f.ExpectAllCached();
}

// A span that fails is counted, and tried once more at the end only with
// retry_spans (background fetch; a prefetch goes over its range once).
TEST(LayerFillTest, FailedSpansAreRetriedOnlyWhenAsked) {
  for (bool retry : {false, true}) {
    SCOPED_TRACE(retry);
    Fixture f;
    AdaptiveFill how = f.How();
    how.span_threads = 1;
    how.retry_spans = retry;
    f.source->fail_plain_reads_ = 1;  // the first span's read
    f.Fill(how);
    // A span the retry brought is no failure (a layer with one counted
    // was never marked complete nor its whole blob checked).
    EXPECT_EQ(f.errors.load(), retry ? 0u : 1u);
    const int reads = f.source->plain_reads_.load();
    EXPECT_EQ(f.Read(0), f.data[0]);  // a reader fetches it itself if need be
    EXPECT_EQ(f.source->plain_reads_.load() - reads, retry ? 0 : 1);
  }
  // Spans that fail again when retried are counted.
  Fixture f;
  AdaptiveFill how = f.How();
  how.span_threads = 1;
  how.retry_spans = true;
  f.source->fail_plain_reads_ = 1 << 20;
  f.Fill(how);
  EXPECT_GT(f.errors.load(), 0u);
}

// A stream that breaks leaves the rest to spans: everything is cached, no
// error counted.
TEST(LayerFillTest, ABrokenStreamLeavesTheRestToSpans) {
  Fixture f;
  AdaptiveFill how = f.How();
  how.stream_rate = 0;
  f.source->fail_after_ = 300 << 10;
  f.Fill(how);
  EXPECT_EQ(f.source->streams_.load(), 1);
  EXPECT_GT(f.source->plain_reads_.load(), 10);
  f.source->fail_after_ = 0;
  f.ExpectAllCached();
}

TEST(LayerFillTest, StopEndsItAtOnce) {
  Fixture f;
  AdaptiveFill how = f.How();
  how.stream_rate = 0;
  f.stop = true;
  f.Fill(how);
  EXPECT_EQ(f.source->streams_.load(), 0);
  EXPECT_EQ(f.source->plain_reads_.load(), 0);
}

// Stopped while a stream runs: it ends at the next span, opens no other
// stream and fills nothing in spans.
TEST(LayerFillTest, StopEndsAStreamUnderWay) {
  Fixture f;
  AdaptiveFill how = f.How();
  how.stream_rate = 0;
  f.source->on_stream_start_ = [&](int) { f.stop = true; };
  f.Fill(how);
  EXPECT_EQ(f.source->streams_.load(), 1);
  EXPECT_EQ(f.source->plain_reads_.load(), 0);
  EXPECT_LT(f.source->streamed_.load(), 256u << 10);
}

TEST(RateLimiterTest, PacesAndStops) {
  RateLimiter limiter(1 << 20);  // 1 MiB/s
  std::atomic<bool> stop{false};
  const absl::Time start = absl::Now();
  limiter.Take(1 << 20, &stop);  // the first goes at once
  limiter.Take(256 << 10, &stop);
  limiter.Take(256 << 10, &stop);
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(1200));  // 1 s + 0.25 s
  EXPECT_LT(took, absl::Seconds(5));
  stop = true;
  const absl::Time before = absl::Now();
  limiter.Take(100 << 20, &stop);  // 100 s of budget: returns at once
  limiter.Take(1, &stop);
  EXPECT_LT(absl::Now() - before, absl::Milliseconds(500));
}

}  // namespace
}  // namespace lazypull
