#include "core/thread_priority.h"

#include <thread>

#include "gtest/gtest.h"

namespace lazypull {
namespace {

TEST(ThreadPriorityTest, LowersOnlyTheCallingThread) {
  const int before = ThisThreadNice();
  int inside = -100, inside_after_raise_attempt = -100;
  std::thread t([&] {
    ASSERT_TRUE(LowerThisThreadPriority(before + 5).ok());
    inside = ThisThreadNice();
    // Asking for a higher priority than the thread has is a no-op.
    ASSERT_TRUE(LowerThisThreadPriority(before).ok());
    inside_after_raise_attempt = ThisThreadNice();
  });
  t.join();
  EXPECT_EQ(inside, std::min(before + 5, 19));
  EXPECT_EQ(inside_after_raise_attempt, inside);
  EXPECT_EQ(ThisThreadNice(), before);  // the rest of the process untouched
}

TEST(ThreadPriorityTest, CapsAtNineteen) {
  int inside = -100;
  std::thread t([&] {
    ASSERT_TRUE(LowerThisThreadPriority(40).ok());
    inside = ThisThreadNice();
  });
  t.join();
  EXPECT_EQ(inside, 19);
}

}  // namespace
}  // namespace lazypull
