#include "core/buffer_pool.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace lazypull {
namespace {

TEST(BufferPoolTest, GivesExactSizesAndReusesFreedBuffers) {
  auto pool = BufferPool::Create(8 << 20);
  const char* first;
  {
    std::shared_ptr<std::string> a = pool->Get(1000000);
    ASSERT_EQ(a->size(), 1000000u);
    a->assign(1000000, 'x');
    first = a->data();
  }
  EXPECT_EQ(pool->stats().idle_bytes, 1u << 20);
  std::shared_ptr<std::string> b = pool->Get(700000);  // same class: reused
  EXPECT_EQ(b->size(), 700000u);
  EXPECT_EQ(b->data(), first);
  EXPECT_EQ(b->at(699999), 'x');  // old bytes, not zeros: the contract
  EXPECT_EQ(pool->stats().reused, 1u);
  EXPECT_EQ(pool->stats().idle_bytes, 0u);
  // Growing within the capacity keeps the buffer.
  b.reset();
  std::shared_ptr<std::string> c = pool->Get(1 << 20);
  EXPECT_EQ(c->data(), first);
  EXPECT_EQ(c->size(), 1u << 20);
}

TEST(BufferPoolTest, ABufferAtMostTwiceTheRequestIsTaken) {
  auto pool = BufferPool::Create(64 << 20);
  { auto big = pool->Get(8 << 20); }
  auto small = pool->Get(100000);  // 128 KiB class: the 8 MiB one is not used
  EXPECT_EQ(pool->stats().reused, 0u);
  EXPECT_EQ(pool->stats().idle_bytes, 8u << 20);
  auto half = pool->Get(3 << 20);  // 4 MiB class: the 8 MiB one is next
  EXPECT_EQ(pool->stats().reused, 1u);
}

TEST(BufferPoolTest, KeepsNoMoreThanItsBound) {
  auto pool = BufferPool::Create(3 << 20);
  {
    std::vector<std::shared_ptr<std::string>> held;
    for (int i = 0; i < 5; ++i) held.push_back(pool->Get(1 << 20));
  }
  EXPECT_EQ(pool->stats().idle_bytes, 3u << 20);
}

TEST(BufferPoolTest, SmallBuffersAreNotPooled) {
  auto pool = BufferPool::Create(8 << 20);
  { auto s = pool->Get(BufferPool::kMinPooled - 1); }
  EXPECT_EQ(pool->stats().idle_bytes, 0u);
  EXPECT_EQ(pool->stats().gets, 0u);
}

TEST(BufferPoolTest, BuffersMayOutliveThePool) {
  auto pool = BufferPool::Create(8 << 20);
  std::shared_ptr<std::string> b = pool->Get(1 << 20);
  std::weak_ptr<BufferPool> gone = pool;
  pool.reset();
  EXPECT_TRUE(gone.expired());
  b->assign(10, 'y');  // still the caller's (a sanitizer build checks this)
  EXPECT_EQ(*b, "yyyyyyyyyy");
  b.reset();  // freed, not given back to a pool that is gone
}

TEST(BufferPoolTest, ManyThreadsAtOnce) {
  auto pool = BufferPool::Create(16 << 20);
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const size_t n = (64 << 10) + ((t * 7919 + i * 104729) % (2 << 20));
        auto b = pool->Get(n);
        ASSERT_EQ(b->size(), n);
        (*b)[0] = static_cast<char>(t);
        (*b)[n - 1] = static_cast<char>(i);
        ASSERT_EQ((*b)[0], static_cast<char>(t));
      }
    });
  }
  for (auto& t : ts) t.join();
  const BufferPool::Stats s = pool->stats();
  EXPECT_EQ(s.gets, 1600u);
  EXPECT_GT(s.reused, 1000u);
  EXPECT_LE(s.idle_bytes, 16u << 20);
}

}  // namespace
}  // namespace lazypull
