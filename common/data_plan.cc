#include "common/data_plan.h"

#include <algorithm>

#include "common/job_spec.h"

namespace gradacc {

v1::WindowPlan PlanWindow(const v1::JobSpec& job, uint64_t window, EpochCursor cursor,
                          const std::vector<uint32_t>& members) {
  const uint64_t n = job.data_plan().samples();
  const uint64_t per_member = uint64_t{std::max(1u, job.window().micro_batches())} * job.window().micro_batch_size();
  v1::WindowPlan plan;
  plan.set_window(window);
  plan.set_epoch(cursor.epoch);
  plan.set_offset(cursor.offset);
  plan.set_samples(std::min(members.size() * per_member, n - std::min(n, cursor.offset)));
  for (uint32_t m : members) plan.add_members(m);
  plan.set_id(PlanId(plan));
  return plan;
}

EpochCursor CursorAfter(const v1::JobSpec& job, const v1::WindowPlan& plan) {
  const uint64_t offset = plan.offset() + plan.samples();
  if (offset >= job.data_plan().samples()) return {plan.epoch() + 1, 0};
  return {plan.epoch(), offset};
}

uint64_t PlanId(const v1::WindowPlan& plan) {
  uint64_t h = SplitMix64(plan.window() + 1);
  for (uint64_t v : {plan.epoch(), plan.offset(), plan.samples()}) h = SplitMix64(h ^ v);
  for (uint32_t m : plan.members()) h = SplitMix64(h ^ (uint64_t{m} + 1));
  return h == 0 ? 1 : h;
}

uint64_t MaxPlannedWindows(uint64_t samples, uint64_t epochs, uint64_t micro_batches, uint64_t micro_batch) {
  const uint64_t per_window = std::max<uint64_t>(1, micro_batches) * std::max<uint64_t>(1, micro_batch);
  return epochs * ((samples + per_window - 1) / per_window);
}

int PlanPosition(const v1::WindowPlan& plan, uint32_t worker) {
  for (int i = 0; i < plan.members_size(); ++i) {
    if (plan.members(i) == worker) return i;
  }
  return -1;
}

}  // namespace gradacc
