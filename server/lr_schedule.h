// Learning-rate schedules, as documented on gradacc.v1.LrSchedule.
#ifndef GRADACC_SERVER_LR_SCHEDULE_H_
#define GRADACC_SERVER_LR_SCHEDULE_H_

#include <cstdint>

#include "gradacc/v1/job.pb.h"

namespace gradacc {

// The learning rate of step `step` (0 for the first window) of a normalised
// job spec. Pure; thread-safe.
double LearningRateAt(const v1::OptimizerSpec& optimizer, const v1::LrSchedule& schedule,
                      uint64_t step);

}  // namespace gradacc

#endif  // GRADACC_SERVER_LR_SCHEDULE_H_
