#include "cli/quiet_wait.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "gtest/gtest.h"

namespace lazypull::cli {
namespace {

using Clock = std::chrono::steady_clock;

// A workload's misses, recorded from another thread.
class Misses {
 public:
  void Miss() {
    std::lock_guard<std::mutex> l(mu_);
    ++s_.misses;
    s_.last = Clock::now();
  }
  MissSample Sample() {
    std::lock_guard<std::mutex> l(mu_);
    return s_;
  }

 private:
  std::mutex mu_;
  MissSample s_;
};

QuietOptions Fast() {
  QuietOptions o;
  o.quiet = absl::Milliseconds(150);
  o.busy_misses = 4;
  o.poll = absl::Milliseconds(5);
  return o;
}

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

TEST(QuietWaitTest, NoMissesMeansQuietAfterThePeriod) {
  Misses m;
  m.Miss();  // before the wait: not counted
  std::atomic<bool> stop{false};
  const auto t0 = Clock::now();
  EXPECT_EQ(WaitForQuiet([&] { return m.Sample(); }, stop, Fast()),
            QuietOutcome::kQuiet);
  EXPECT_GE(Seconds(Clock::now() - t0), 0.15);
  EXPECT_LT(Seconds(Clock::now() - t0), 2.0);
}

TEST(QuietWaitTest, FewMissesPushTheQuietPeriodBack) {
  Misses m;
  std::atomic<bool> stop{false};
  // Three misses 100 ms apart (below the busy count): quiet only 300 ms
  // after the last, at least 600 ms in (a late miss only makes it later).
  QuietOptions o = Fast();
  o.quiet = absl::Milliseconds(300);
  std::thread workload([&] {
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      m.Miss();
    }
  });
  const auto t0 = Clock::now();
  EXPECT_EQ(WaitForQuiet([&] { return m.Sample(); }, stop, o),
            QuietOutcome::kQuiet);
  const double waited = Seconds(Clock::now() - t0);
  workload.join();
  EXPECT_GE(waited, 0.59);
  EXPECT_LT(waited, 3.0);
}

TEST(QuietWaitTest, ReadsThatKeepMissingEndTheWaitAtOnce) {
  Misses m;
  std::atomic<bool> stop{false};
  QuietOptions o = Fast();
  o.quiet = absl::Seconds(3);
  std::thread workload([&] {
    for (int i = 0; i < 4; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      m.Miss();
    }
  });
  const auto t0 = Clock::now();
  EXPECT_EQ(WaitForQuiet([&] { return m.Sample(); }, stop, o),
            QuietOutcome::kBusy);
  const double waited = Seconds(Clock::now() - t0);
  workload.join();
  EXPECT_LT(waited, 2.5);  // before a quiet period could have passed
}

TEST(QuietWaitTest, StopEndsTheWait) {
  Misses m;
  std::atomic<bool> stop{false};
  QuietOptions o = Fast();
  o.quiet = absl::Seconds(60);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    stop = true;
  });
  const auto t0 = Clock::now();
  EXPECT_EQ(WaitForQuiet([&] { return m.Sample(); }, stop, o),
            QuietOutcome::kStopped);
  stopper.join();
  EXPECT_LT(Seconds(Clock::now() - t0), 5.0);
}

}  // namespace
}  // namespace lazypull::cli
