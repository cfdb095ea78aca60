// The data plan of an elastic job (JobSpec.data_plan, job.proto): which part
// of the epoch each window trains on, decided by the server when the window
// opens and handed to its workers (JoinResponse.plan, ParametersHeader.plan).
// The arithmetic is here so that the server, the workers and the tests share
// one definition:
//
//   window samples R = min(|members| * K * b, N - offset)
//   after the window: offset += R; when offset reaches N: (epoch + 1, 0)
//
// How a member splits its part into micro-batches is data_order.h's even
// split (worker/training/data_order.h). Pure functions; thread-safe.
#ifndef GRADACC_COMMON_DATA_PLAN_H_
#define GRADACC_COMMON_DATA_PLAN_H_

#include <cstdint>
#include <vector>

#include "gradacc/v1/job.pb.h"

namespace gradacc {

// Where a window's samples start: offset into epoch `epoch`'s permutation.
struct EpochCursor {
  uint64_t epoch = 0;
  uint64_t offset = 0;
};

// Whether `job` plans its windows' data (data_plan.samples > 0).
inline bool HasDataPlan(const v1::JobSpec& job) { return job.data_plan().samples() > 0; }

// The plan of window `window` opening at `cursor` with `members` (sorted).
v1::WindowPlan PlanWindow(const v1::JobSpec& job, uint64_t window, EpochCursor cursor,
                          const std::vector<uint32_t>& members);
// The cursor after `plan`'s window closed.
EpochCursor CursorAfter(const v1::JobSpec& job, const v1::WindowPlan& plan);
// WindowPlan.id: splitmix64 chained over window, epoch, offset, samples and
// the members (never 0).
uint64_t PlanId(const v1::WindowPlan& plan);
// The most windows `epochs` epochs can take (one member per window):
// epochs * ceil(N / (K * b)).
uint64_t MaxPlannedWindows(uint64_t samples, uint64_t epochs, uint64_t micro_batches, uint64_t micro_batch);
// Position of `worker` among the plan's members, or -1.
int PlanPosition(const v1::WindowPlan& plan, uint32_t worker);

}  // namespace gradacc

#endif  // GRADACC_COMMON_DATA_PLAN_H_
