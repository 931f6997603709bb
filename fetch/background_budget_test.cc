#include "fetch/background_budget.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

TEST(BackgroundBudgetTest, AFixedCapAdmitsUpToItAndAlwaysOne) {
  BackgroundBudget b({.fixed_bytes = 100, .min_piece_bytes = 1});
  EXPECT_EQ(b.Cap(), 100u);
  EXPECT_TRUE(b.CanStart(1000)) << "one request always goes";
  b.Start(1000);
  EXPECT_FALSE(b.CanStart(1));
  EXPECT_FALSE(b.Release(900)) << "100 in flight: no piece (cap / 4) fits";
  EXPECT_FALSE(b.Release(20)) << "80 in flight: not yet";
  EXPECT_TRUE(b.Release(5)) << "75 in flight: a piece of 25 now fits";
  EXPECT_TRUE(b.CanStart(25));
  EXPECT_FALSE(b.CanStart(26));
  EXPECT_TRUE(b.Release(75)) << "empty: whoever waits may go";
  EXPECT_EQ(b.in_flight(), 0u);
  EXPECT_FALSE(b.Release(10)) << "nothing to release";
  EXPECT_EQ(b.in_flight(), 0u);
}

// Feeds `rate` bytes/s for `ms` milliseconds of real time, in 5 ms steps.
// Returns whether any step reported a larger cap.
bool Feed(BackgroundBudget* b, double rate, int ms) {
  // Each call's bytes are those of the time since the previous call; a first
  // call of none opens the budget's sampling interval at `last`, so no step
  // is counted into an interval that began after it.
  bool grew = b->Delivered(0);
  const absl::Time end = absl::Now() + absl::Milliseconds(ms);
  absl::Time last = absl::Now();
  while (absl::Now() < end) {
    absl::SleepFor(absl::Milliseconds(5));
    const absl::Time now = absl::Now();
    grew = b->Delivered(static_cast<uint64_t>(
               rate * absl::ToDoubleSeconds(now - last))) ||
           grew;
    last = now;
  }
  return grew;
}

// An adaptive budget with room to move: gain 2, cap within [64 KiB, 16 MiB],
// 8 MiB before the first sample.
BackgroundBudgetOptions AdaptiveOptions() {
  return {.gain = 2.0,
          .min_bytes = 64 << 10,
          .max_bytes = 16 << 20,
          .initial_bytes = 8 << 20,
          .min_piece_bytes = 4096};
}

TEST(BackgroundBudgetTest, TheAdaptiveCapIsGainTimesTheMeasuredProduct) {
  BackgroundBudget b(AdaptiveOptions());
  EXPECT_EQ(b.Cap(), 8u << 20) << "no sample yet";
  b.OnHeaders(absl::Milliseconds(20));
  b.OnHeaders(absl::Milliseconds(35));  // queued: the minimum counts
  EXPECT_EQ(b.Cap(), 8u << 20) << "no rate sample yet";
  // 12.5 MB/s over a few sampling intervals (2 RTT = 40 ms < 50 ms each).
  Feed(&b, 12.5e6, 300);
  EXPECT_NEAR(b.bandwidth(), 12.5e6, 2.5e6);
  EXPECT_EQ(b.min_rtt(), absl::Milliseconds(20));
  // 12.5 MB/s x 20 ms x 2 = 500 kB.
  EXPECT_NEAR(static_cast<double>(b.Cap()), 500000, 100000);
  EXPECT_NEAR(static_cast<double>(b.PieceBytes()),
              static_cast<double>(b.Cap()) / 4, 1);
  // A faster link raises it (the window keeps the largest rate)...
  EXPECT_TRUE(Feed(&b, 50e6, 300));
  EXPECT_NEAR(static_cast<double>(b.Cap()), 2000000, 400000);
  // ...and a slower stretch does not lower it within the window.
  EXPECT_FALSE(Feed(&b, 1e6, 200));
  EXPECT_NEAR(static_cast<double>(b.Cap()), 2000000, 400000);
}

TEST(BackgroundBudgetTest, AWholeRequestIsARateSample) {
  BackgroundBudget b(AdaptiveOptions());
  b.OnHeaders(absl::Milliseconds(20));
  EXPECT_EQ(b.bandwidth(), 0.0);
  // A TOC read: 400 kB in 40 ms (sending to last byte) = 10 MB/s, with no
  // interval of steady traffic behind it.
  EXPECT_FALSE(b.RequestDone(400000, absl::Milliseconds(40)))
      << "the cap shrinks from its initial value: no room for anyone";
  EXPECT_DOUBLE_EQ(b.bandwidth(), 10e6);
  EXPECT_EQ(b.Cap(), 400000u) << "2 x 10 MB/s x 20 ms";
  // A slower request lowers nothing (a lower bound of the link); a faster
  // one raises the estimate.
  EXPECT_FALSE(b.RequestDone(100000, absl::Milliseconds(40)));
  EXPECT_DOUBLE_EQ(b.bandwidth(), 10e6);
  EXPECT_TRUE(b.RequestDone(1000000, absl::Milliseconds(50))) << "the cap grew";
  EXPECT_DOUBLE_EQ(b.bandwidth(), 20e6);
  // Nothing, or no time: no sample.
  EXPECT_FALSE(b.RequestDone(0, absl::Milliseconds(1)));
  EXPECT_FALSE(b.RequestDone(1 << 20, absl::ZeroDuration()));
  EXPECT_DOUBLE_EQ(b.bandwidth(), 20e6);
}

TEST(BackgroundBudgetTest, TheAdaptiveCapStaysWithinItsBounds) {
  BackgroundBudget slow({.min_bytes = 64 << 10, .max_bytes = 1 << 20});
  slow.OnHeaders(absl::Microseconds(100));
  Feed(&slow, 1e6, 120);
  EXPECT_EQ(slow.Cap(), 64u << 10);
  BackgroundBudget fast({.min_bytes = 64 << 10, .max_bytes = 1 << 20});
  fast.OnHeaders(absl::Milliseconds(500));
  Feed(&fast, 1e9, 120);
  EXPECT_EQ(fast.Cap(), 1u << 20);
}

TEST(BackgroundBudgetTest, RateSamplesExpireAfterTheWindow) {
  BackgroundBudget b({.min_bytes = 4096,
                      .initial_bytes = 1 << 20,
                      .window = absl::Milliseconds(200)});
  b.OnHeaders(absl::Milliseconds(1));
  Feed(&b, 1e6, 120);
  EXPECT_LT(b.Cap(), 1u << 20);
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_EQ(b.Cap(), 1u << 20) << "old rate samples no longer count";
  EXPECT_EQ(b.bandwidth(), 0);
  EXPECT_EQ(b.min_rtt(), absl::Milliseconds(1)) << "the smallest RTT stays";
}

TEST(BackgroundBudgetTest, PiecesHaveAFloor) {
  BackgroundBudget b({.fixed_bytes = 1 << 20, .min_piece_bytes = 300 << 10});
  EXPECT_EQ(b.PieceBytes(), 300u << 10) << "not a quarter of the cap";
  BackgroundBudget big({.fixed_bytes = 8 << 20});
  EXPECT_EQ(big.PieceBytes(), 2u << 20);
}

TEST(BackgroundBudgetTest, TryStartChecksAndChargesInOneStep) {
  BackgroundBudget b({.fixed_bytes = 100, .min_piece_bytes = 1});
  EXPECT_TRUE(b.TryStart(1000)) << "one request always goes";
  EXPECT_EQ(b.in_flight(), 1000u);
  EXPECT_FALSE(b.TryStart(1));
  EXPECT_EQ(b.in_flight(), 1000u) << "a refused start charges nothing";
  EXPECT_TRUE(b.Release(1000));
  EXPECT_TRUE(b.TryStart(60));
  EXPECT_FALSE(b.TryStart(41));
  EXPECT_TRUE(b.TryStart(40));
  EXPECT_EQ(b.in_flight(), 100u);
}

// Sources sharing a budget, each admitting pieces from its own thread, never
// hold more than the cap between them (a check, then a charge, let two
// sources take the same room).
TEST(BackgroundBudgetTest, SharersNeverOvershootTheCap) {
  constexpr uint64_t kCap = 4000, kPiece = 1000;
  BackgroundBudget b({.fixed_bytes = kCap, .min_piece_bytes = 1});
  std::atomic<uint64_t> worst{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) {
    ts.emplace_back([&] {
      while (!go.load()) {
      }
      for (int k = 0; k < 20000; ++k) {
        if (!b.TryStart(kPiece)) continue;
        uint64_t seen = b.in_flight();
        uint64_t w = worst.load();
        while (seen > w && !worst.compare_exchange_weak(w, seen)) {
        }
        if (b.Release(kPiece)) b.Notify();
      }
    });
  }
  go.store(true);
  for (auto& t : ts) t.join();
  EXPECT_LE(worst.load(), kCap);
  EXPECT_GE(worst.load(), kPiece);
  EXPECT_EQ(b.in_flight(), 0u);
}

TEST(BackgroundBudgetTest, ListenersAreCalledUntilRemoved) {
  BackgroundBudget b({.fixed_bytes = 100});
  std::atomic<int> calls{0};
  const int id = b.AddListener([&] { calls.fetch_add(1); });
  b.Start(100);
  if (b.Release(100)) b.Notify();
  EXPECT_EQ(calls.load(), 1);
  b.RemoveListener(id);
  b.Start(100);
  if (b.Release(100)) b.Notify();
  EXPECT_EQ(calls.load(), 1);
}

TEST(BackgroundBudgetTest, ConcurrentUseBalances) {
  BackgroundBudget b;
  std::vector<std::thread> ts;
  for (int i = 0; i < 4; ++i) {
    ts.emplace_back([&] {
      for (int k = 0; k < 1000; ++k) {
        b.Start(1000);
        if (b.Delivered(1000)) b.Notify();
        for (int j = 0; j < 4; ++j) {
          if (b.Release(250)) b.Notify();
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(b.in_flight(), 0u);
}

}  // namespace
}  // namespace lazypull
