// HttpBlobSource against a loopback "registry" serving one blob with Range
// support, and faults a real registry will not produce: every read returns
// the right bytes or fails; the scheduler shares, coalesces and prioritizes.
#include "fetch/http_blob_source.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "core/thread_priority.h"
#include "fetch/curl_http.h"
#include "fetch/reference.h"
#include "fetch/testing/loopback_http_server.h"
#include "fetch/testing/one_use_url_storage.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using testing::LoopbackHttpServer;
using testing::TestRequest;
using testing::TestResponse;

enum class Fault {
  kNone,
  k200ForRange,
  kWrongContentRange,
  kWrongTotal,  // the right range, of a blob of another size
  kTruncate,
  kNotFound,
  kFlipOnce  // the first answer's first byte flipped (a bad edge, a bit)
};

std::string MakeBlob(size_t n) {
  std::string s(n, '\0');
  uint32_t x = 12345;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    s[i] = static_cast<char>(x >> 16);
  }
  return s;
}

class HttpBlobSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    blob_ = MakeBlob(1 << 20);
    digest_ = Sha256::Of(blob_);
    auto server = LoopbackHttpServer::Start(
        [this](const TestRequest& req, TestResponse* resp) {
          Handle(req, resp);
        });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    auto http = CurlHttpTransport::Create();
    ASSERT_TRUE(http.ok());
    http_ = std::move(*http);
    auto ref = ImageReference::Parse(
        absl::StrCat("127.0.0.1:", server_->port(), "/test/blob:v1"));
    ASSERT_TRUE(ref.ok()) << ref.status();
    RegistryOptions ro;
    ro.http = http_.get();
    ro.hosts.plain_http = true;
    ro.hosts.hosts_dir = "/nonexistent";
    ro.retry.initial_backoff = absl::Milliseconds(1);
    auto client = RegistryClient::Create(*ref, ro);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = std::move(*client);
    desc_.digest = digest_;
    desc_.size = static_cast<int64_t>(blob_.size());
  }

  // Warm()s the whole blob and waits until its bytes are in (nobody reads
  // them yet).
  void WarmAll(HttpBlobSource& src) {
    src.Warm(0, blob_.size());
    for (int i = 0; i < 1000 && src.stats().bytes < blob_.size(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_EQ(src.stats().bytes, blob_.size());
  }

  // An on-demand read of [off, off + len) gets the blob's bytes.
  void ExpectOnDemandRead(HttpBlobSource* src, uint64_t off, uint64_t len) {
    std::string x(len, '\0');
    ASSERT_TRUE(src->ReadAt(off, absl::MakeSpan(x)).ok());
    EXPECT_EQ(x, blob_.substr(off, x.size()));
  }
  void Handle(const TestRequest& req, TestResponse* resp) {
    {
      absl::MutexLock l(&log_mu_);
      auto it = req.headers.find("range");
      log_.push_back({it == req.headers.end() ? "" : it->second, absl::Now()});
    }
    if (delay_ms_ > 0) resp->delay = absl::Milliseconds(delay_ms_.load());
    if (pause_after_ > 0) {
      resp->pause_after = pause_after_.load();
      resp->pause = [this] {
        if (!paused_.HasBeenNotified()) paused_.Notify();
        release_.WaitForNotification();
      };
    }
    auto it = req.headers.find("range");
    if (it == req.headers.end()) {
      resp->body = blob_;
      return;
    }
    // "bytes=a-b"
    std::vector<std::string> ab = absl::StrSplit(it->second.substr(6), '-');
    uint64_t a = 0, b = 0;
    if (ab.size() != 2 || !absl::SimpleAtoi(ab[0], &a) ||
        !absl::SimpleAtoi(ab[1], &b)) {
      resp->status = 400;
      return;
    }
    b = std::min<uint64_t>(b, blob_.size() - 1);
    switch (fault_.load()) {
      case Fault::k200ForRange:
        resp->body = blob_;
        return;
      case Fault::kWrongContentRange:
        resp->status = 206;
        resp->headers.push_back(
            {"Content-Range",
             absl::StrCat("bytes ", a + 1, "-", b + 1, "/", blob_.size())});
        resp->body = blob_.substr(a + 1, b - a + 1);
        return;
      case Fault::kWrongTotal:
        resp->status = 206;
        resp->headers.push_back(
            {"Content-Range",
             absl::StrCat("bytes ", a, "-", b, "/", blob_.size() + 1)});
        resp->body = blob_.substr(a, b - a + 1);
        return;
      case Fault::kNotFound:
        resp->status = 404;
        return;
      case Fault::kTruncate:
        if (truncations_.fetch_add(1) < 2) resp->truncate_after = 100;
        break;
      case Fault::kNone:
      case Fault::kFlipOnce:
        break;
    }
    resp->status = 206;
    resp->headers.push_back({"Content-Range", absl::StrCat("bytes ", a, "-", b,
                                                           "/", blob_.size())});
    resp->body = blob_.substr(a, b - a + 1);
    if (fault_.load() == Fault::kFlipOnce && flips_.fetch_add(1) == 0) {
      resp->body[0] ^= 1;
    }
  }

  std::string blob_;
  Digest digest_;
  Descriptor desc_;
  std::atomic<Fault> fault_{Fault::kNone};
  std::atomic<int> delay_ms_{0};
  std::atomic<int> truncations_{0};
  std::atomic<int> flips_{0};
  // Answers send this many body bytes, then wait for release_ (0: no).
  std::atomic<size_t> pause_after_{0};
  absl::Notification paused_, release_;
  // Each request's Range header and arrival time.
  struct Arrival {
    std::string range;
    absl::Time at;
  };
  absl::Mutex log_mu_;
  std::vector<Arrival> log_ ABSL_GUARDED_BY(log_mu_);
  std::unique_ptr<LoopbackHttpServer> server_;
  std::unique_ptr<CurlHttpTransport> http_;
  std::shared_ptr<RegistryClient> client_;
};

TEST_F(HttpBlobSourceTest, WholeBlobDigestAfterOutOfOrderReads) {
  HttpBlobSourceOptions o;
  o.max_request_size = 128 << 10;
  HttpBlobSource src(client_, desc_, o);
  std::string buf(4096, '\0');
  // Out of order first (not hashable yet), then the start.
  ASSERT_TRUE(
      src.ReadAt(700000, absl::MakeSpan(buf), ReadPriority::kOnDemand).ok());
  EXPECT_EQ(src.hashed_prefix(), 0u);
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(buf), ReadPriority::kOnDemand).ok());
  EXPECT_EQ(src.hashed_prefix(), 4096u);
  uint64_t again = 0;
  absl::Status st = src.VerifyWholeBlob(&again);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(src.hashed_prefix(), blob_.size());
  // The range at 700000 waited in memory: it is not read again.
  EXPECT_EQ(again, blob_.size() - 4096 - 4096);
  EXPECT_TRUE(src.VerifyWholeBlob().ok());  // idempotent

  // Ranges finishing out of order (parallel requests) still extend the
  // prefix once the gap before them is filled: nothing is fetched twice.
  HttpBlobSource ooo(client_, desc_, o);
  ASSERT_TRUE(
      ooo.ReadAt(8192, absl::MakeSpan(buf), ReadPriority::kBackground).ok());
  ASSERT_TRUE(
      ooo.ReadAt(4096, absl::MakeSpan(buf), ReadPriority::kBackground).ok());
  EXPECT_EQ(ooo.hashed_prefix(), 0u);
  ASSERT_TRUE(ooo.ReadAt(0, absl::MakeSpan(buf), ReadPriority::kOnDemand).ok());
  EXPECT_EQ(ooo.hashed_prefix(), 3 * 4096u);

  // A blob whose bytes are not those of its digest fails, naming both.
  Descriptor wrong = desc_;
  wrong.digest = Sha256::Of("something else");
  HttpBlobSource bad(client_, wrong, o);
  st = bad.VerifyWholeBlob();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find(digest_.ToString()), std::string::npos) << st;
}

// Bytes go into the running hash as they land, before their chunk is
// checked: an answer with a flipped byte (refused by the chunk's digest, read
// again right) poisoned it, and a layer every chunk of which verified was
// reported corrupt. A mismatch is now read once more, whole, before it is
// believed.
TEST_F(HttpBlobSourceTest, ABadAnswerReadAgainDoesNotFailTheWholeBlob) {
  fault_ = Fault::kFlipOnce;
  HttpBlobSourceOptions o;
  o.max_request_size = 128 << 10;
  HttpBlobSource src(client_, desc_, o);
  std::string buf(4096, '\0');
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(buf), ReadPriority::kOnDemand).ok());
  EXPECT_NE(buf, blob_.substr(0, 4096)) << "the fault did not fire";
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(buf), ReadPriority::kOnDemand).ok());
  EXPECT_EQ(buf, blob_.substr(0, 4096));
  uint64_t again = 0;
  absl::Status st = src.VerifyWholeBlob(&again);
  EXPECT_TRUE(st.ok()) << st;
  EXPECT_GE(again, blob_.size()) << "the blob was not read again whole";
  EXPECT_TRUE(src.VerifyWholeBlob().ok());
}

TEST_F(HttpBlobSourceTest, OutOfOrderBytesSpillInsteadOfBeingFetchedAgain) {
  char dir_template[] = "/tmp/lazypull-spill-test.XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  HttpBlobSourceOptions o;
  o.max_request_size = 128 << 10;
  o.hash_window_bytes = 0;  // every out-of-order range goes to the spill file
  o.spill_dir = dir;
  {
    HttpBlobSource src(client_, desc_, o);
    std::string buf(4096, '\0');
    // Far ahead of the prefix, twice overlapping, then the start.
    for (uint64_t off : {700000ul, 702048ul, 300000ul}) {
      ASSERT_TRUE(src.ReadAt(off, absl::MakeSpan(buf)).ok());
      EXPECT_EQ(buf, blob_.substr(off, 4096));
    }
    ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(buf)).ok());
    EXPECT_EQ(src.hashed_prefix(), 4096u);
    const uint64_t before = src.stats().bytes;
    uint64_t again = 0;
    absl::Status st = src.VerifyWholeBlob(&again);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(src.hashed_prefix(), blob_.size());
    // Everything but the 4 KiB at 0 and the 3 spilled ranges (6144 + 4096
    // bytes) is read, once.
    EXPECT_EQ(again, blob_.size() - 4096 - 6144 - 4096);
    EXPECT_EQ(src.stats().bytes - before, again);
    // The spill file has no name: nothing is left in the directory.
    EXPECT_TRUE(std::filesystem::is_empty(dir));
  }
  // A corrupt spill would fail the digest, never pass it: the bytes
  // hashed are the ones fetched. Without a spill directory they are
  // fetched again.
  o.spill_dir.clear();
  HttpBlobSource nospill(client_, desc_, o);
  std::string buf(4096, '\0');
  ASSERT_TRUE(nospill.ReadAt(700000, absl::MakeSpan(buf)).ok());
  uint64_t again = 0;
  ASSERT_TRUE(nospill.VerifyWholeBlob(&again).ok());
  EXPECT_EQ(again, blob_.size());
  std::filesystem::remove_all(dir);
}

TEST_F(HttpBlobSourceTest, SourcesOfOneLinkShareTheBackgroundBudget) {
  delay_ms_ = 200;
  auto budget = std::make_shared<BackgroundBudget>(BackgroundBudgetOptions{
      .fixed_bytes = 64 << 10, .min_piece_bytes = 4096});
  HttpBlobSourceOptions o;
  o.background_budget = budget;
  o.coalesce_gap = 0;
  HttpBlobSource a(client_, desc_, o), b(client_, desc_, o);
  const uint64_t piece = budget->PieceBytes();
  const uint64_t pieces = ((64 << 10) + piece - 1) / piece;
  EXPECT_EQ(piece, (64u << 10) / 4);
  // 64 KiB of background reads on each source: cut into pieces of a quarter
  // of the cap, at most four in flight on the link at once, so at least
  // 2 x 4 / 4 = 2 rounds of 200 ms.
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (HttpBlobSource* s : {&a, &b}) {
    ts.emplace_back([&, s] {
      std::string out(64 << 10, '\0');
      const uint64_t off = s == &a ? 0 : 500000;
      EXPECT_TRUE(
          s->ReadAt(off, absl::MakeSpan(out), ReadPriority::kBackground).ok());
      EXPECT_EQ(out, blob_.substr(off, out.size()));
    });
  }
  for (auto& t : ts) t.join();
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(a.stats().requests + b.stats().requests, 2 * pieces);
  EXPECT_LE(a.stats().max_concurrent, 4u);
  EXPECT_GE(took, std::chrono::milliseconds(390));
  EXPECT_EQ(budget->in_flight(), 0u);
}

// Many sources of one link contending for a budget that fits one piece:
// a worker woken because a piece fitted may find that another source took
// the room meanwhile (the budget is not under either source's mutex), and
// must wait again, not take a piece that does not fit (it once indexed past
// its queue and crashed). Every read gets its bytes; the budget ends empty.
TEST_F(HttpBlobSourceTest, ManySourcesRaceForOneBudget) {
  auto budget = std::make_shared<BackgroundBudget>(
      BackgroundBudgetOptions{.fixed_bytes = 4096, .min_piece_bytes = 4096});
  HttpBlobSourceOptions o;
  o.background_budget = budget;
  o.coalesce_gap = 0;
  std::vector<std::unique_ptr<HttpBlobSource>> sources;
  for (int i = 0; i < 6; ++i) {
    sources.push_back(std::make_unique<HttpBlobSource>(client_, desc_, o));
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (size_t i = 0; i < sources.size(); ++i) {
    for (int t = 0; t < 3; ++t) {
      ts.emplace_back([&, i, t] {
        std::mt19937 rng(static_cast<uint32_t>(i * 7 + t));
        for (int k = 0; k < 40; ++k) {
          const uint64_t len = 1 + rng() % 12000;
          const uint64_t off = rng() % (blob_.size() - len);
          std::string out(len, '\0');
          absl::Status st = sources[i]->ReadAt(off, absl::MakeSpan(out),
                                               ReadPriority::kBackground);
          if (!st.ok() || out != blob_.substr(off, len)) ++bad;
        }
      });
    }
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  sources.clear();
  EXPECT_EQ(budget->in_flight(), 0u);
}

TEST_F(HttpBlobSourceTest, WarmedBytesServeTheReadsThatFollow) {
  HttpBlobSource src(client_, desc_);
  WarmAll(src);
  if (HasFatalFailure()) return;
  const uint64_t requests = src.stats().requests;
  // Prefetch reads, cut on the warm grid, and an on-demand one: no request.
  std::string a(300000, '\0'), b(4096, '\0');
  ASSERT_TRUE(
      src.ReadAt(700000, absl::MakeSpan(a), ReadPriority::kPrefetch).ok());
  ASSERT_TRUE(src.ReadAt(5, absl::MakeSpan(b)).ok());
  EXPECT_EQ(a, blob_.substr(700000, a.size()));
  EXPECT_EQ(b, blob_.substr(5, b.size()));
  EXPECT_EQ(src.stats().requests, requests);
  EXPECT_GE(src.stats().warm_hits, 2u);
  // Dropped: the next read is fetched.
  src.DropWarm();
  ASSERT_TRUE(src.ReadAt(5, absl::MakeSpan(b)).ok());
  EXPECT_EQ(b, blob_.substr(5, b.size()));
  EXPECT_EQ(src.stats().requests, requests + 1);
  src.Warm(0, blob_.size());  // closed after DropWarm: nothing more
  EXPECT_EQ(src.stats().requests, requests + 1);

  // A warm piece read in full is let go at once (no wait for DropWarm).
  HttpBlobSource once(client_, desc_);
  once.Warm(0, blob_.size());
  std::string all(blob_.size(), '\0');
  ASSERT_TRUE(
      once.ReadAt(0, absl::MakeSpan(all), ReadPriority::kPrefetch).ok());
  EXPECT_TRUE(all == blob_);
  const uint64_t after_first = once.stats().requests;
  ASSERT_TRUE(once.ReadAt(0, absl::MakeSpan(b)).ok());
  EXPECT_EQ(once.stats().requests, after_first + 1);

  // Nothing past max_warm_bytes is fetched ahead.
  HttpBlobSourceOptions o;
  o.max_warm_bytes = 0;
  HttpBlobSource capped(client_, desc_, o);
  capped.Warm(0, blob_.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(capped.stats().requests, 0u);
}

// An on-demand read that lands in a warm piece does not count towards the
// prefetch's reads of it: the piece stays until the prefetch has read it
// all, and its second half is not fetched again.
TEST_F(HttpBlobSourceTest, OnDemandReadsDoNotUseUpWarmPieces) {
  HttpBlobSource src(client_, desc_);
  WarmAll(src);  // one 1 MiB piece
  if (HasFatalFailure()) return;
  const uint64_t requests = src.stats().requests;
  std::string od(600000, '\0');
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(od)).ok());
  const size_t half = blob_.size() / 2;
  std::string a(half, '\0'), b(blob_.size() - half, '\0');
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(a), ReadPriority::kPrefetch).ok());
  ASSERT_TRUE(
      src.ReadAt(half, absl::MakeSpan(b), ReadPriority::kPrefetch).ok());
  EXPECT_EQ(od, blob_.substr(0, od.size()));
  EXPECT_TRUE(a + b == blob_);
  EXPECT_EQ(src.stats().requests, requests);  // all from the warm piece
}

// Prefetch reads that overlap (a span and a read-ahead of the same bytes)
// count those bytes once: the piece stays until every byte was read, and
// the part nobody read yet is not fetched again.
TEST_F(HttpBlobSourceTest, OverlappingPrefetchReadsDoNotUseUpWarmPieces) {
  HttpBlobSource src(client_, desc_);
  WarmAll(src);  // one 1 MiB piece
  if (HasFatalFailure()) return;
  const uint64_t requests = src.stats().requests;
  const size_t part = blob_.size() * 3 / 5;  // twice: more than the piece
  std::string a(part, '\0'), again(part, '\0');
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(a), ReadPriority::kPrefetch).ok());
  ASSERT_TRUE(
      src.ReadAt(0, absl::MakeSpan(again), ReadPriority::kPrefetch).ok());
  std::string rest(blob_.size() - part, '\0');
  ASSERT_TRUE(
      src.ReadAt(part, absl::MakeSpan(rest), ReadPriority::kPrefetch).ok());
  EXPECT_TRUE(a == again && a + rest == blob_);
  EXPECT_EQ(src.stats().requests, requests);  // all from the warm piece
  // Now every byte was read: let go.
  std::string b(4096, '\0');
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(b), ReadPriority::kPrefetch).ok());
  EXPECT_EQ(src.stats().requests, requests + 1);
}

// A reader need not wait for the end of the request serving it: the body
// lands in place, and its range is handed over once it is in.
TEST_F(HttpBlobSourceTest, ReadersTakeTheirBytesWhileTheRequestRuns) {
  pause_after_ = 300000;
  HttpBlobSource src(client_, desc_);
  std::string all(blob_.size(), '\0');
  std::atomic<size_t> reported{0};
  absl::Status all_st;
  std::thread whole([&] {
    all_st = src.ReadAtStreaming(0, absl::MakeSpan(all),
                                 ReadPriority::kPrefetch, [&](size_t n) {
                                   EXPECT_GE(n, reported.load());
                                   reported = n;
                                 });
  });
  paused_.WaitForNotification();  // the answer's first 300000 bytes are out
  // A read inside them shares the request and returns before its end (in
  // a thread: a read that waited for the whole request would never return
  // while the rest is held back).
  std::string part(100000, '\0');
  std::promise<absl::Status> part_done;
  std::future<absl::Status> part_st = part_done.get_future();
  std::thread reader(
      [&] { part_done.set_value(src.ReadAt(150000, absl::MakeSpan(part))); });
  if (part_st.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    release_.Notify();  // let the request end, then fail
    reader.join();
    whole.join();
    FAIL() << "the read waited for the end of the request serving it";
  }
  reader.join();
  EXPECT_TRUE(part_st.get().ok());
  EXPECT_TRUE(part == blob_.substr(150000, part.size()));
  EXPECT_EQ(src.stats().requests, 1u);
  // The streaming reader saw its prefix grow before the rest came.
  for (int i = 0; i < 2000 && reported.load() < 250000; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_GE(reported.load(), 250000u);
  EXPECT_LE(reported.load(), 300000u);
  release_.Notify();
  whole.join();
  ASSERT_TRUE(all_st.ok()) << all_st;
  EXPECT_TRUE(all == blob_);
  EXPECT_EQ(src.stats().requests, 1u);
}

// Warm(after_next_read): the warm request waits for the next on-demand
// read (a mount's tail read) to be answered, so that the server sends that
// answer first, and then goes out at once (not after its whole body).
TEST_F(HttpBlobSourceTest, WarmAfterNextReadWaitsForThatReadsAnswer) {
  HttpBlobSource src(client_, desc_);
  src.Warm(0, 512 << 10, /*after_next_read=*/true);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(src.stats().requests, 0u);
  delay_ms_ = 100;         // headers 100 ms after the request
  pause_after_ = 1 << 10;  // then the body's rest after a pause
  std::string tail(64 << 10, '\0');
  absl::Status tail_st;
  std::thread t([&] {
    tail_st = src.ReadAt(blob_.size() - tail.size(), absl::MakeSpan(tail));
  });
  // The warm request goes out while the tail read's body is held back.
  for (int i = 0; i < 5000 && src.stats().requests < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(src.stats().requests, 2u);
  release_.Notify();
  t.join();
  ASSERT_TRUE(tail_st.ok()) << tail_st;
  EXPECT_TRUE(tail == blob_.substr(blob_.size() - tail.size()));
  std::vector<Arrival> log;
  for (int i = 0; i < 2000; ++i) {
    {
      absl::MutexLock l(&log_mu_);
      log = log_;
    }
    if (log.size() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[0].range, absl::StrCat("bytes=", blob_.size() - tail.size(),
                                       "-", blob_.size() - 1));
  EXPECT_EQ(log[1].range, "bytes=0-524287");
  EXPECT_GE(log[1].at - log[0].at, absl::Milliseconds(90));
  // Its bytes serve the prefetch's reads.
  std::string a(512 << 10, '\0');
  ASSERT_TRUE(src.ReadAt(0, absl::MakeSpan(a), ReadPriority::kPrefetch).ok());
  EXPECT_TRUE(a == blob_.substr(0, a.size()));
  EXPECT_EQ(src.stats().requests, 2u);
}

// The read the warm gate waits for fails (a 404: no such blob): nothing is
// fetched ahead; DropWarm() with the gate still shut drops the warm
// pieces too.
TEST_F(HttpBlobSourceTest, NoWarmBytesAfterTheGatingReadFails) {
  {
    HttpBlobSource src(client_, desc_);
    src.Warm(0, 512 << 10, /*after_next_read=*/true);
    fault_ = Fault::kNotFound;
    std::string tail(4096, '\0');
    EXPECT_FALSE(
        src.ReadAt(blob_.size() - tail.size(), absl::MakeSpan(tail)).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_EQ(src.stats().requests, 1u);
    fault_ = Fault::kNone;
  }
  HttpBlobSource src(client_, desc_);
  src.Warm(0, 512 << 10, /*after_next_read=*/true);
  src.DropWarm();
  ExpectOnDemandRead(&src, 600000, 4096);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(src.stats().requests, 1u);
  absl::MutexLock l(&log_mu_);
  ASSERT_EQ(log_.size(), 2u);  // the failed read and this one
  EXPECT_EQ(log_[1].range, "bytes=600000-604095");
}

// An on-demand read far beyond what an in-flight request has brought (at
// the link's measured rate, more than two round trips away) does not wait
// for it: it asks for its bytes itself.
TEST_F(HttpBlobSourceTest, OnDemandReadFarAheadOfAStreamAsksItself) {
  auto budget = std::make_shared<BackgroundBudget>();
  HttpBlobSourceOptions o;
  o.background_budget = budget;
  HttpBlobSource src(client_, desc_, o);
  pause_after_ = 64 << 10;
  src.Warm(0, blob_.size());  // one request, held after its first 64 KiB
  paused_.WaitForNotification();
  // A measured rate for the link: ~1 MB over 60 ms.
  (void)budget->Delivered(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  (void)budget->Delivered(1 << 20);
  ASSERT_GT(budget->bandwidth(), 0);
  // Two such reads of the same bytes, the second while the first one's
  // request is out (answers take 200 ms): that request serves both.
  delay_ms_ = 200;
  std::promise<bool> done[2];
  std::future<bool> got[2] = {done[0].get_future(), done[1].get_future()};
  std::vector<std::thread> readers;
  for (int i = 0; i < 2; ++i) {
    if (i == 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    readers.emplace_back([&, i] {
      std::string x(4096, '\0');
      const bool ok = src.ReadAt(1000000, absl::MakeSpan(x)).ok() &&
                      x == blob_.substr(1000000, x.size());
      done[i].set_value(ok);
    });
  }
  bool in_time = true;
  for (auto& g : got) {
    in_time = in_time &&
              g.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  }
  release_.Notify();
  for (auto& t : readers) t.join();
  ASSERT_TRUE(in_time) << "a read waited for the stream";
  EXPECT_TRUE(got[0].get() && got[1].get());
  EXPECT_EQ(src.stats().requests, 2u);
}

TEST_F(HttpBlobSourceTest, ReadsSplitDifferentlyCopyTheRightBytes) {
  // A background read cut in 16 KiB pieces joins two on-demand pieces in
  // flight: its piece at 56384 is served by the long one, [50000, 150000),
  // and the next, at 72768, by the short one, [70000, 95000), which ends
  // before where the long one's bytes reached; then pieces of its own.
  // Each piece must copy exactly its own range.
  delay_ms_ = 100;
  auto budget = std::make_shared<BackgroundBudget>(BackgroundBudgetOptions{
      .fixed_bytes = 64 << 10, .min_piece_bytes = 4096});
  HttpBlobSourceOptions o;
  o.background_budget = budget;
  o.coalesce_gap = 0;
  HttpBlobSource src(client_, desc_, o);
  auto on_demand = [&](uint64_t off, uint64_t len) {
    ExpectOnDemandRead(&src, off, len);
  };
  std::thread short_od(on_demand, 70000, 25000);  // in flight first
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::thread od(on_demand, 50000, 100000);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  std::string y(200000, '\0');
  ASSERT_TRUE(
      src.ReadAt(40000, absl::MakeSpan(y), ReadPriority::kBackground).ok());
  EXPECT_EQ(y, blob_.substr(40000, y.size()));
  od.join();
  short_od.join();
  EXPECT_GE(src.stats().shared, 1u);
}

// A read overlapping pieces in flight at both ends fetches only the bytes
// between them: nothing twice, and every byte right.
TEST_F(HttpBlobSourceTest, OverlappingReadsFetchEveryByteOnce) {
  delay_ms_ = 100;
  HttpBlobSourceOptions o;
  o.coalesce_gap = 0;
  HttpBlobSource src(client_, desc_, o);
  auto on_demand = [&](uint64_t off, uint64_t len) {
    ExpectOnDemandRead(&src, off, len);
  };
  std::thread left(on_demand, 100000, 200000);   // [100000, 300000)
  std::thread right(on_demand, 500000, 100000);  // [500000, 600000)
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  on_demand(250000, 300000);  // [250000, 550000): only [300000, 500000) new
  left.join();
  right.join();
  EXPECT_EQ(src.stats().requests, 3u);
  EXPECT_EQ(src.stats().bytes, 500000u);  // 200000 + 100000 + 200000
  EXPECT_EQ(src.stats().shared, 2u);
}

TEST_F(HttpBlobSourceTest, ReadsTheRightBytes) {
  HttpBlobSourceOptions o;
  o.max_request_size = 100000;  // a 300 KB read is split
  HttpBlobSource src(client_, desc_, o);
  EXPECT_EQ(src.size(), blob_.size());
  for (uint64_t off : {0ul, 1ul, 4095ul, 500000ul, (1ul << 20) - 300000}) {
    std::string out(300000, '\0');
    ASSERT_TRUE(src.ReadAt(off, absl::MakeSpan(out)).ok());
    EXPECT_EQ(out, blob_.substr(off, out.size())) << off;
  }
  std::string past(10, '\0');
  EXPECT_EQ(src.ReadAt(blob_.size() - 5, absl::MakeSpan(past)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_GE(src.stats().requests, 15u);
  EXPECT_EQ(src.stats().failures, 0u);
}

TEST_F(HttpBlobSourceTest, SingleFlightAndCoalescing) {
  delay_ms_ = 200;
  HttpBlobSourceOptions o;
  o.max_concurrent_requests = 2;
  o.reserved_on_demand = 1;
  HttpBlobSource src(client_, desc_, o);
  // Four readers of one range: one request.
  std::vector<std::thread> ts;
  std::atomic<int> good{0};
  for (int i = 0; i < 4; ++i) {
    ts.emplace_back([&] {
      std::string out(5000, '\0');
      if (src.ReadAt(1000, absl::MakeSpan(out)).ok() &&
          out == blob_.substr(1000, 5000)) {
        good.fetch_add(1);
      }
    });
  }
  for (auto& t : ts) t.join();
  ts.clear();
  EXPECT_EQ(good.load(), 4);
  EXPECT_EQ(src.stats().requests, 1u);
  EXPECT_EQ(src.stats().shared, 3u);

  // Prefetch reads queued behind a busy prefetch slot, near each other: one
  // request for all of them once the slot frees.
  const uint64_t before = src.stats().requests;
  for (int i = 0; i < 6; ++i) {
    ts.emplace_back([&, i] {
      if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      const uint64_t off = i == 0 ? 900000 : 100000 + i * 10000;
      std::string out(8000, '\0');
      if (src.ReadAt(off, absl::MakeSpan(out), ReadPriority::kPrefetch).ok() &&
          out == blob_.substr(off, 8000)) {
        good.fetch_add(1);
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(good.load(), 10);
  EXPECT_EQ(src.stats().requests - before, 2u);
  EXPECT_GE(src.stats().coalesced, 4u);
  EXPECT_LE(src.stats().max_concurrent, 2u);
}

TEST_F(HttpBlobSourceTest, OnDemandDoesNotWaitBehindBackground) {
  delay_ms_ = 300;
  HttpBlobSourceOptions o;
  o.max_concurrent_requests = 4;
  o.max_background_bytes = 64 << 10;  // one 64 KiB background read at a time
  o.coalesce_gap = 0;
  HttpBlobSource src(client_, desc_, o);
  std::vector<std::thread> ts;
  for (int i = 0; i < 6; ++i) {
    ts.emplace_back([&, i] {
      std::string out(64 << 10, '\0');
      // Far apart: no coalescing.
      EXPECT_TRUE(src.ReadAt(static_cast<uint64_t>(i) * 150000,
                             absl::MakeSpan(out), ReadPriority::kBackground)
                      .ok());
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto start = std::chrono::steady_clock::now();
  std::string out(1000, '\0');
  ASSERT_TRUE(src.ReadAt(1000000, absl::MakeSpan(out)).ok());
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(out, blob_.substr(1000000, 1000));
  // Six background reads one at a time take ~1.8 s; the on-demand one goes
  // at once.
  EXPECT_LT(took, std::chrono::milliseconds(1000));
  for (auto& t : ts) t.join();
  // Each 64 KiB read went as one piece (pieces are at least 256 KiB).
  EXPECT_EQ(src.stats().requests_by_priority[2], 6u);
}

// The names of this process's threads at nice `nice`, sorted (from
// /proc/self/task/*/stat).
std::vector<std::string> ThreadsAtNice(int nice) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream f(e.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(f)),
                     std::istreambuf_iterator<char>());
    // "TID (comm) state ...": after "(comm) " the state is field 3, nice
    // field 19.
    const size_t open = stat.find('(');
    const size_t paren = stat.rfind(')');
    if (open == std::string::npos || paren == std::string::npos) continue;
    std::vector<std::string> fields =
        absl::StrSplit(stat.substr(paren + 2), ' ');
    int v;
    if (fields.size() > 16 && absl::SimpleAtoi(fields[16], &v) && v == nice) {
      names.push_back(stat.substr(open + 1, paren - open - 1));
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A thread takes its creator's nice value: with StartWorkers() called
// first, a background reader that lowered its priority starts no request
// worker, so none (they may carry on-demand reads later) runs at its nice.
TEST_F(HttpBlobSourceTest, WorkersStartedFirstKeepNormalPriority) {
  ASSERT_EQ(ThreadsAtNice(19).size(), 0u)
      << "the test runner is already at nice 19";
  for (const bool start_first : {false, true}) {
    HttpBlobSourceOptions o;
    o.max_concurrent_requests = 3;
    HttpBlobSource src(client_, desc_, o);
    if (start_first) src.StartWorkers();
    std::thread t([&] {
      ASSERT_TRUE(LowerThisThreadPriority(19).ok());
      std::string out(4096, '\0');
      EXPECT_TRUE(
          src.ReadAt(0, absl::MakeSpan(out), ReadPriority::kBackground).ok());
      EXPECT_EQ(out, blob_.substr(0, 4096));
    });
    t.join();
    // Without StartWorkers() the lowered reader started the worker itself
    // (this also shows the check can see one). (Request workers only: a
    // CI run once saw a second thread at nice 19 here, whose name the
    // message now shows.)
    const std::vector<std::string> lowered = ThreadsAtNice(19);
    EXPECT_EQ(std::count(lowered.begin(), lowered.end(), "lp-source"),
              start_first ? 0 : 1)
        << start_first << ": " << absl::StrJoin(lowered, ", ");
  }
}

TEST_F(HttpBlobSourceTest, A200ToARangeFailsTheRead) {
  fault_ = Fault::k200ForRange;
  HttpBlobSource src(client_, desc_);
  std::string out(100, 'Z');
  absl::Status st = src.ReadAt(10, absl::MakeSpan(out));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(out, std::string(100, 'Z')) << "no byte of a refused answer";
}

TEST_F(HttpBlobSourceTest, AWrongContentRangeFailsTheRead) {
  fault_ = Fault::kWrongContentRange;
  HttpBlobSource src(client_, desc_);
  std::string out(100, 'Z');
  absl::Status st = src.ReadAt(10, absl::MakeSpan(out));
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(out, std::string(100, 'Z'));
}

TEST_F(HttpBlobSourceTest, ABrokenBodyIsResumedOrFails) {
  fault_ = Fault::kTruncate;
  HttpBlobSource src(client_, desc_);
  std::string out(50000, '\0');
  absl::Status st = src.ReadAt(1234, absl::MakeSpan(out));
  if (st.ok()) {
    EXPECT_EQ(out, blob_.substr(1234, 50000));
  }
  EXPECT_GE(truncations_.load(), 1);
}

// A stream is one GET however it is read, in blob order: its bytes extend
// the whole-blob hash as they land, so the check reads nothing again.
// A stream is read at its reader's pace: the range requests' time limit
// does not count the time it waits for its reader (it timed out every 60 s,
// reconnecting, and a rate-limited stream of 64 MiB could not finish).
TEST_F(HttpBlobSourceTest,
       AStreamWaitingForItsReaderOutlivesTheRangeTimeLimit) {
  CurlHttpOptions ho;
  ho.reader_window = 64 << 10;  // (so that the transfer does pause)
  auto http = CurlHttpTransport::Create(ho);
  ASSERT_TRUE(http.ok());
  auto ref = ImageReference::Parse(
      absl::StrCat("127.0.0.1:", server_->port(), "/test/blob:v1"));
  ASSERT_TRUE(ref.ok());
  RegistryOptions ro;
  ro.http = http->get();
  ro.hosts.plain_http = true;
  ro.hosts.hosts_dir = "/nonexistent";
  ro.range_timeout = absl::Seconds(1);
  auto client = RegistryClient::Create(*ref, ro);
  ASSERT_TRUE(client.ok()) << client.status();
  HttpBlobSource src(std::shared_ptr<RegistryClient>(std::move(*client)),
                     desc_);
  auto stream = src.OpenStream(0, blob_.size(), ReadPriority::kBackground);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string got(100000, '\0');
  ASSERT_TRUE((*stream)->Read(absl::MakeSpan(got)).ok());
  absl::SleepFor(absl::Milliseconds(2500));
  std::string rest(blob_.size() - got.size(), '\0');
  absl::Status st = (*stream)->Read(absl::MakeSpan(rest));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(got + rest, blob_);
  absl::MutexLock l(&log_mu_);
  EXPECT_EQ(log_.size(), 1u) << "the stream was cut and resumed";
}

// The registry redirects to storage whose signed URLs serve once (as one
// that expired meanwhile would refuse the next use): a body cut off there,
// which the transport resumed at the same URL and got 403 for, is asked of
// the registry again from where it stopped (it failed the read: EIO).
TEST_F(HttpBlobSourceTest, ACutBodyWhoseSignedUrlExpiredIsAskedAgain) {
  auto store = testing::OneUseUrlStorage::Start(blob_, 300000);
  ASSERT_TRUE(store.ok()) << store.status();
  auto ref = ImageReference::Parse((*store)->host() + "/test/blob:v1");
  ASSERT_TRUE(ref.ok());
  auto fresh_client = [&]() -> std::shared_ptr<RegistryClient> {
    RegistryOptions ro;
    ro.http = http_.get();
    ro.hosts.plain_http = true;
    ro.hosts.hosts_dir = "/nonexistent";
    ro.retry.initial_backoff = absl::Milliseconds(1);
    auto c = RegistryClient::Create(*ref, ro);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? std::shared_ptr<RegistryClient>(std::move(*c)) : nullptr;
  };
  HttpBlobSource src(fresh_client(), desc_);
  std::string buf(blob_.size(), '\0');
  absl::Status st = src.ReadAt(0, absl::MakeSpan(buf), ReadPriority::kOnDemand);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_TRUE(buf == blob_);
  EXPECT_EQ((*store)->registry_hits(), 2) << "the registry was not asked again";
  // The same for a stream.
  (*store)->Reset();
  HttpBlobSource s2(fresh_client(), desc_);
  auto stream = s2.OpenStream(0, blob_.size(), ReadPriority::kBackground);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string got(blob_.size(), '\0');
  st = (*stream)->Read(absl::MakeSpan(got));
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ((*store)->registry_hits(), 2);
  EXPECT_TRUE(got == blob_);
}

TEST_F(HttpBlobSourceTest, AStreamIsOneRequestAndFeedsTheHash) {
  HttpBlobSource src(client_, desc_);
  auto stream = src.OpenStream(0, blob_.size(), ReadPriority::kBackground);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string got;
  for (size_t pos = 0; pos < blob_.size();) {
    std::string piece(std::min<size_t>(100000, blob_.size() - pos), '\0');
    ASSERT_TRUE((*stream)->Read(absl::MakeSpan(piece)).ok());
    got += piece;
    pos += piece.size();
  }
  EXPECT_EQ(got, blob_);
  std::string more(1, '\0');
  EXPECT_EQ((*stream)->Read(absl::MakeSpan(more)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(src.stats().requests, 1u);
  EXPECT_EQ(src.stats().bytes, blob_.size());
  {
    absl::MutexLock l(&log_mu_);
    ASSERT_EQ(log_.size(), 1u);
    EXPECT_EQ(log_[0].range, absl::StrCat("bytes=0-", blob_.size() - 1));
  }
  EXPECT_EQ(src.hashed_prefix(), blob_.size());
  uint64_t again = 1;
  EXPECT_TRUE(src.VerifyWholeBlob(&again).ok());
  EXPECT_EQ(again, 0u);

  // A stream of a middle range: its bytes wait for the prefix, then count.
  HttpBlobSource mid(client_, desc_);
  auto s2 = mid.OpenStream(4096, 8192, ReadPriority::kBackground);
  ASSERT_TRUE(s2.ok()) << s2.status();
  std::string b(8192, '\0');
  ASSERT_TRUE((*s2)->Read(absl::MakeSpan(b)).ok());
  EXPECT_EQ(b, blob_.substr(4096, 8192));
  EXPECT_EQ(mid.hashed_prefix(), 0u);
  std::string head(4096, '\0');
  ASSERT_TRUE(mid.ReadAt(0, absl::MakeSpan(head)).ok());
  EXPECT_EQ(mid.hashed_prefix(), 3 * 4096u);
  EXPECT_EQ(mid.OpenStream(blob_.size() - 10, 11, ReadPriority::kBackground)
                .status()
                .code(),
            absl::StatusCode::kOutOfRange);
}

TEST_F(HttpBlobSourceTest, AStreamRefusesA200AndAWrongContentRange) {
  for (Fault f :
       {Fault::k200ForRange, Fault::kWrongContentRange, Fault::kWrongTotal}) {
    fault_ = f;
    HttpBlobSource src(client_, desc_);
    auto stream = src.OpenStream(10, 5000, ReadPriority::kBackground);
    ASSERT_FALSE(stream.ok());
    // (The transport itself refuses a 200 to a range request and a range
    // other than the one asked for; a wrong total is the source's to see.)
    if (f != Fault::k200ForRange) {
      EXPECT_EQ(stream.status().code(), absl::StatusCode::kDataLoss)
          << stream.status();
    }
    EXPECT_EQ(src.hashed_prefix(), 0u);
    EXPECT_EQ(src.stats().failures, 1u);
  }
}

TEST_F(HttpBlobSourceTest, AStreamWhoseBodyBreaksIsResumedOrFails) {
  fault_ = Fault::kTruncate;
  HttpBlobSource src(client_, desc_);
  auto stream = src.OpenStream(1234, 50000, ReadPriority::kBackground);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::string out(50000, '\0');
  absl::Status st = (*stream)->Read(absl::MakeSpan(out));
  if (st.ok()) {
    EXPECT_EQ(out, blob_.substr(1234, 50000));
  } else {
    // A failed stream stays failed.
    EXPECT_EQ((*stream)->Read(absl::MakeSpan(out)).code(), st.code());
  }
  EXPECT_GE(truncations_.load(), 1);
}

}  // namespace
}  // namespace lazypull
