// Unit tests of DeadlineQueue: timers run in deadline order and can be cancelled.
#include "server/deadline_queue.h"

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "common/errors.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "tests/server/part_test_util.h"

namespace gradacc {
namespace {

using part_test::Event;
using part_test::TempDir;

TEST(DeadlineQueueTest, RunsInDeadlineOrderAndCancels) {
  DeadlineQueue q;
  std::vector<int> order;
  gradacc::Mutex mu;
  Event done;
  const absl::Time now = absl::Now();
  q.Schedule(now + absl::Milliseconds(60), [&] {
    gradacc::MutexLock lock(&mu);
    order.push_back(3);
    done.Notify();
  });
  const uint64_t cancelled = q.Schedule(now + absl::Milliseconds(20), [&] { ADD_FAILURE() << "cancelled ran"; });
  q.Schedule(now + absl::Milliseconds(40), [&] {
    gradacc::MutexLock lock(&mu);
    order.push_back(2);
  });
  q.Schedule(now - absl::Seconds(1), [&] {  // already due
    gradacc::MutexLock lock(&mu);
    order.push_back(1);
  });
  EXPECT_TRUE(q.Cancel(cancelled));
  EXPECT_FALSE(q.Cancel(cancelled));
  ASSERT_TRUE(done.WaitFor(absl::Seconds(10)));
  gradacc::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

}  // namespace
}  // namespace gradacc
