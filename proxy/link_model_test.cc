#include "proxy/link_model.h"

#include <cstdint>

#include "gtest/gtest.h"

namespace lazypull::proxy {
namespace {

constexpr int64_t kMs = 1'000'000;

LinkDirection::Params Params(uint64_t bps, int64_t delay_ns,
                             uint64_t queue = 0) {
  LinkDirection::Params p;
  p.bits_per_second = bps;
  p.delay_ns = delay_ns;
  p.queue_bytes = queue;
  return p;
}

TEST(LinkDirectionTest, UnlimitedOnlyDelays) {
  LinkDirection link(Params(0, 20 * kMs));
  EXPECT_FALSE(link.limited());
  EXPECT_EQ(link.Send(100, 1 << 30), 100 + 20 * kMs);
  EXPECT_EQ(link.Room(100), UINT64_MAX);
  EXPECT_EQ(link.Backlog(100), 0u);
}

TEST(LinkDirectionTest, SerializesAtTheRateThenDelays) {
  // 8 Mbit/s = 1 byte per microsecond.
  LinkDirection link(Params(8'000'000, 10 * kMs));
  EXPECT_EQ(link.Send(0, 1000), 1 * kMs + 10 * kMs);
  // Queued behind the first segment: store-and-forward, back to back.
  EXPECT_EQ(link.Send(0, 1000), 2 * kMs + 10 * kMs);
  EXPECT_EQ(link.Backlog(0), 2000u);
  EXPECT_EQ(link.Backlog(kMs), 1000u);
  EXPECT_EQ(link.Backlog(5 * kMs), 0u);
  // An idle wire starts at once.
  EXPECT_EQ(link.Send(50 * kMs, 500), 50 * kMs + kMs / 2 + 10 * kMs);
}

TEST(LinkDirectionTest, ArrivalsNeverGoBackwards) {
  LinkDirection link(Params(100'000'000, 5 * kMs));
  int64_t last = 0;
  for (int64_t now = 0; now < 100 * kMs; now += 37'000) {
    int64_t at = link.Send(now, 1 + (now / 1000) % 16384);
    EXPECT_GE(at, last);
    last = at;
  }
}

TEST(LinkDirectionTest, DefaultQueueIsSmallButAtLeast64KiB) {
  EXPECT_EQ(LinkDirection(Params(8'000'000, 0)).queue_bytes(), 65536u);
  // 1 Gbit/s: 5 ms is 625 000 bytes.
  EXPECT_EQ(LinkDirection(Params(1'000'000'000, 0)).queue_bytes(), 625000u);
  EXPECT_EQ(LinkDirection(Params(8'000'000, 0, 1000)).queue_bytes(), 1000u);
}

TEST(LinkDirectionTest, RoomShrinksWithBacklogAndComesBack) {
  LinkDirection link(Params(8'000'000, 0, 10000));
  EXPECT_EQ(link.Room(0), 10000u);
  link.Send(0, 8000);
  EXPECT_EQ(link.Room(0), 2000u);
  // Room for 5000 once the backlog drained to 5000: at 3 ms.
  int64_t t = link.TimeRoomFor(0, 5000);
  EXPECT_GE(t, 3 * kMs);
  EXPECT_LE(t, 3 * kMs + 10'000);
  EXPECT_GE(link.Room(t), 5000u);
  EXPECT_EQ(link.TimeRoomFor(0, 2000), 0);
}

TEST(LinkDirectionTest, SharedQueueSplitsTheRate) {
  // Two senders alternating segments on one direction: each gets half.
  LinkDirection link(Params(8'000'000, 0, 65536));
  int64_t now = 0, a_done = 0, b_done = 0;
  uint64_t a_left = 100000, b_left = 100000;
  while (a_left > 0 || b_left > 0) {
    now = link.TimeRoomFor(now, 2000);
    if (a_left > 0) {
      uint64_t n = std::min<uint64_t>(1000, a_left);
      a_left -= n;
      a_done = link.Send(now, n);
    }
    if (b_left > 0) {
      uint64_t n = std::min<uint64_t>(1000, b_left);
      b_left -= n;
      b_done = link.Send(now, n);
    }
  }
  // 200 000 bytes at 1 byte/us: 200 ms; both finish near the end.
  EXPECT_EQ(b_done, 200 * kMs);
  EXPECT_GE(a_done, 199 * kMs);
}

TEST(ParseBandwidthTest, TcNotation) {
  EXPECT_EQ(*ParseBandwidth("100mbit"), 100'000'000u);
  EXPECT_EQ(*ParseBandwidth("8Mbit"), 8'000'000u);
  EXPECT_EQ(*ParseBandwidth("1.5gbit"), 1'500'000'000u);
  EXPECT_EQ(*ParseBandwidth("500kbit"), 500'000u);
  EXPECT_EQ(*ParseBandwidth("64000bit"), 64'000u);
  EXPECT_EQ(*ParseBandwidth("0"), 0u);
  EXPECT_EQ(*ParseBandwidth("unlimited"), 0u);
  EXPECT_FALSE(ParseBandwidth("100").ok());
  EXPECT_FALSE(ParseBandwidth("100mbps").ok());
  EXPECT_FALSE(ParseBandwidth("-1mbit").ok());
  EXPECT_FALSE(ParseBandwidth("mbit").ok());
}

}  // namespace
}  // namespace lazypull::proxy
