// Unit tests of StragglerTracker: names the slowest worker and stragglers after windows in a row.
#include "server/straggler_tracker.h"

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

// A window of `n` workers that arrived `after_ms` after its opening (-1:
// missing), closed `closed_ms` after it.
ClosingWindow WindowOf(uint64_t number, const std::vector<int>& after_ms, int closed_ms) {
  ClosingWindow w;
  w.window = number;
  w.opened = absl::FromUnixSeconds(1000);
  w.last_arrival = w.opened + absl::Milliseconds(closed_ms);
  for (uint32_t i = 0; i < after_ms.size(); ++i) {
    if (after_ms[i] < 0) {
      w.missing.push_back(i);
      continue;
    }
    Slot slot;
    slot.arrival = w.opened + absl::Milliseconds(after_ms[i]);
    w.slots.push_back(std::move(slot));
    w.workers.push_back(i);
  }
  return w;
}

TEST(StragglerTrackerTest, NamesTheSlowestAndStragglersAfterWindowsInARow) {
  StragglerTracker tracker(4, 2);
  std::vector<uint32_t> fresh;
  v1::WindowArrivals a = tracker.Observe(WindowOf(0, {10, 40, 20, 30}, 40), &fresh);
  EXPECT_DOUBLE_EQ(a.median_after_open_seconds(), 0.025);
  EXPECT_EQ(a.slowest_worker(), 1);
  EXPECT_NEAR(a.slowest_behind_median_seconds(), 0.015, 1e-9);
  EXPECT_FALSE(a.slowest_missing());
  ASSERT_EQ(a.workers_size(), 4);
  EXPECT_NEAR(a.workers(0).behind_median_seconds(), -0.015, 1e-9);
  // Worker 3 misses a window: slowest (missing, at least until the close),
  // not a straggler yet.
  a = tracker.Observe(WindowOf(1, {10, 20, 30, -1}, 500), &fresh);
  EXPECT_EQ(a.slowest_worker(), 3);
  EXPECT_TRUE(a.slowest_missing());
  EXPECT_NEAR(a.workers(3).after_open_seconds(), 0.5, 1e-9);
  EXPECT_NEAR(a.slowest_behind_median_seconds(), 0.48, 1e-9);
  EXPECT_TRUE(fresh.empty());
  EXPECT_EQ(tracker.late_windows(3), 1u);
  // Two in a row: a straggler; worker 1 missing once is the less slow.
  a = tracker.Observe(WindowOf(2, {10, -1, 30, -1}, 500), &fresh);
  EXPECT_EQ(a.slowest_worker(), 3);
  EXPECT_EQ(fresh, std::vector<uint32_t>{3});
  EXPECT_TRUE(tracker.straggler(3));
  EXPECT_FALSE(tracker.straggler(1));
  EXPECT_EQ(std::vector<uint32_t>(a.stragglers().begin(), a.stragglers().end()), std::vector<uint32_t>{3});
  v1::Status status;
  tracker.Fill(&status);
  EXPECT_EQ(status.stragglers_size(), 1);
  EXPECT_EQ(status.straggler_windows(), 2u);
  EXPECT_EQ(status.last_window_arrivals().window(), 2u);
  // Contributing again ends it.
  fresh.clear();
  a = tracker.Observe(WindowOf(3, {10, 20, 30, 35}, 35), &fresh);
  EXPECT_FALSE(tracker.straggler(3));
  EXPECT_EQ(tracker.late_windows(3), 0u);
  EXPECT_EQ(a.stragglers_size(), 0);
  StragglerTracker never(2, 0);
  for (uint64_t w = 0; w < 5; ++w) never.Observe(WindowOf(w, {10, -1}, 100), &fresh);
  EXPECT_FALSE(never.straggler(1));
  EXPECT_EQ(never.late_windows(1), 5u);
}

}  // namespace
}  // namespace gradacc
