// The data order of worker/training/data_order.h: the fixed formula, and the
// elastic one (common/data_plan.h + PlannedSlot) under membership changes
// within an epoch, a lost member, and a resume with another number of
// workers: every sample of every epoch exactly once (or a gap the plan
// records).
#include "worker/training/data_order.h"

#include <algorithm>
#include <random>
#include <vector>

#include "common/data_plan.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

v1::JobSpec PlannedJob(uint64_t samples, uint32_t k, uint32_t b) {
  v1::JobSpec job;
  job.mutable_window()->set_micro_batches(k);
  job.mutable_window()->set_micro_batch_size(b);
  job.mutable_window()->set_max_workers(8);
  job.mutable_data_plan()->set_samples(samples);
  job.mutable_data_plan()->set_epochs(3);
  return job;
}

// Marks the positions of epoch perm that `plan`'s members (all but `lost`)
// take; returns the samples they took.
uint64_t Take(const v1::WindowPlan& plan, uint32_t k_count, uint32_t b, const std::vector<uint32_t>& lost,
              std::vector<int>& used) {
  uint64_t taken = 0;
  for (int r = 0; r < plan.members_size(); ++r) {
    if (std::count(lost.begin(), lost.end(), plan.members(r))) continue;
    for (uint32_t k = 0; k < k_count; ++k) {
      const auto range =
          PlannedSlot(plan.offset(), plan.samples(), plan.members_size(), k_count, static_cast<uint32_t>(r), k);
      EXPECT_LE(range.end - range.begin, b) << "a slot never exceeds b";
      for (uint64_t p = range.begin; p < range.end; ++p) ++used[p];
      taken += range.end - range.begin;
    }
  }
  return taken;
}

TEST(DataOrderTest, FixedFormulaIsTheEvenSplitOfItsWindow) {
  // The fixed path, as it was before plans existed.
  const WindowGeometry g{/*samples=*/1000, /*workers=*/3, /*micro_batches=*/2, /*micro_batch=*/16};
  for (uint64_t t = 0; t < 2 * g.windows_per_epoch(); ++t) {
    const uint64_t base = (t % g.windows_per_epoch()) * g.window_samples();
    const uint64_t size = std::min(g.window_samples(), g.samples - base);
    for (uint32_t r = 0; r < 3; ++r) {
      for (uint32_t k = 0; k < 2; ++k) {
        const uint64_t s = r * 2 + k;
        const auto range = g.Slot(t, r, k);
        EXPECT_EQ(range.begin, base + s * size / 6);
        EXPECT_EQ(range.end, base + (s + 1) * size / 6);
      }
    }
  }
}

TEST(DataOrderTest, EveryMembershipSequenceUsesEverySampleOncePerEpoch) {
  constexpr uint64_t kSamples = 997;  // prime: windows end unevenly
  constexpr uint32_t kK = 3, kB = 7;
  const v1::JobSpec job = PlannedJob(kSamples, kK, kB);
  std::mt19937 rng(7);
  EpochCursor cursor;
  std::vector<int> used(kSamples, 0);
  uint64_t window = 0, epochs_seen = 0;
  while (cursor.epoch < 3) {
    // 1 to 6 members, any ids below 8, sorted: joins and leaves at every
    // window boundary.
    std::vector<uint32_t> members;
    for (uint32_t id = 0; id < 8; ++id) {
      if (rng() % 2) members.push_back(id);
    }
    if (members.empty()) members.push_back(static_cast<uint32_t>(rng() % 8));
    const v1::WindowPlan plan = PlanWindow(job, window++, cursor, members);
    ASSERT_EQ(plan.epoch(), cursor.epoch);
    ASSERT_EQ(plan.offset(), cursor.offset);
    EXPECT_EQ(plan.samples(), std::min<uint64_t>(members.size() * kK * kB, kSamples - cursor.offset));
    EXPECT_EQ(Take(plan, kK, kB, {}, used), plan.samples());
    const EpochCursor next = CursorAfter(job, plan);
    if (next.epoch != cursor.epoch) {
      for (uint64_t p = 0; p < kSamples; ++p) ASSERT_EQ(used[p], 1) << "epoch " << cursor.epoch << " position " << p;
      std::fill(used.begin(), used.end(), 0);
      ++epochs_seen;
    }
    cursor = next;
  }
  EXPECT_EQ(epochs_seen, 3u);
  EXPECT_LE(window, MaxPlannedWindows(kSamples, 3, kK, kB));
}

TEST(DataOrderTest, ResumeWithAnotherWorldSizeContinuesTheEpoch) {
  // 4 members, then (a resume from the checkpoint's cursor) 2, then 3.
  const v1::JobSpec job = PlannedJob(500, 2, 5);
  std::vector<int> used(500, 0);
  EpochCursor cursor;
  uint64_t window = 0;
  for (const std::vector<uint32_t>& members :
       {std::vector<uint32_t>{0, 1, 2, 3}, std::vector<uint32_t>{0, 1}, std::vector<uint32_t>{0, 1, 2}}) {
    for (int i = 0; i < 6 && cursor.epoch == 0; ++i) {
      const v1::WindowPlan plan = PlanWindow(job, window++, cursor, members);
      Take(plan, 2, 5, {}, used);
      cursor = CursorAfter(job, plan);
    }
  }
  // (6 * 40 + 6 * 20 + 6 * 30 = 540 > 500: the epoch ended in the third part.)
  EXPECT_EQ(cursor.epoch, 1u);
  EXPECT_EQ(std::count(used.begin(), used.end(), 1), 500);
}

TEST(DataOrderTest, ALostMemberLeavesAGapThePlanShows) {
  const v1::JobSpec job = PlannedJob(100, 1, 10);
  std::vector<int> used(100, 0);
  const v1::WindowPlan plan = PlanWindow(job, 0, {}, {0, 1, 2});
  EXPECT_EQ(plan.samples(), 30u);
  const uint64_t received = Take(plan, 1, 10, /*lost=*/{1}, used);
  EXPECT_EQ(received, 20u);
  EXPECT_EQ(plan.samples() - received, 10u) << "the gap: planned minus received";
  for (uint64_t p = 10; p < 20; ++p) EXPECT_EQ(used[p], 0) << "member 1's slot stays unused";
  const EpochCursor next = CursorAfter(job, plan);
  EXPECT_EQ(next.offset, 30u) << "the cursor moves by the plan, not by what arrived";
}

TEST(DataOrderTest, PlanIdNamesEveryField) {
  const v1::JobSpec job = PlannedJob(100, 1, 10);
  const v1::WindowPlan a = PlanWindow(job, 3, {1, 20}, {0, 2});
  EXPECT_NE(a.id(), 0u);
  EXPECT_EQ(a.id(), PlanWindow(job, 3, {1, 20}, {0, 2}).id());
  EXPECT_NE(a.id(), PlanWindow(job, 4, {1, 20}, {0, 2}).id());
  EXPECT_NE(a.id(), PlanWindow(job, 3, {1, 30}, {0, 2}).id());
  EXPECT_NE(a.id(), PlanWindow(job, 3, {1, 20}, {0, 1}).id());
  EXPECT_NE(a.id(), PlanWindow(job, 3, {1, 20}, {0, 1, 2}).id());
  EXPECT_EQ(PlanPosition(a, 2), 1);
  EXPECT_EQ(PlanPosition(a, 1), -1);
}

}  // namespace
}  // namespace gradacc
