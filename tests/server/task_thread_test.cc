// Unit tests of TaskThread: tasks run in order; Stop wakes a sleeping task.
#include "server/task_thread.h"

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

TEST(TaskThreadTest, RunsInOrderAndStopWakesSleepers) {
  TaskThread t;
  std::vector<int> seen;
  for (int i = 0; i < 5; ++i) t.Post([&seen, i] { seen.push_back(i); });
  ASSERT_TRUE(t.Run([] {}, absl::Seconds(10)));
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4}));
  std::atomic<bool> gave_up{false};
  t.Post([&] { gave_up = t.Sleep(absl::Hours(1)); });
  t.Stop();
  ASSERT_TRUE(t.Run([] {}, absl::Seconds(10))) << "Stop must wake a sleeping task";
  EXPECT_TRUE(gave_up);
}

}  // namespace
}  // namespace gradacc
