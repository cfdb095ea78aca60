// LearningRateAt: constant, step and cosine schedules, with and without a
// linear warmup, as documented on gradacc.v1.LrSchedule.
#include "server/lr_schedule.h"

#include <cmath>

#include "gtest/gtest.h"

namespace gradacc {
namespace {

v1::OptimizerSpec Lr(double lr) {
  v1::OptimizerSpec o;
  o.set_lr(lr);
  return o;
}

TEST(LrScheduleTest, ConstantScheduleIsTheBaseRateAtEveryStep) {
  v1::LrSchedule s;
  s.set_kind(v1::LrSchedule::KIND_CONSTANT);
  for (uint64_t step : {0, 1, 1000}) EXPECT_DOUBLE_EQ(LearningRateAt(Lr(0.1), s, step), 0.1);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(0.1), v1::LrSchedule(), 7), 0.1);  // unspecified = constant
}

TEST(LrScheduleTest, StepScheduleMultipliesByGammaEveryStepSize) {
  v1::LrSchedule s;
  s.set_kind(v1::LrSchedule::KIND_STEP);
  s.set_step_size(3);
  s.set_gamma(0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 0), 1.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 2), 1.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 3), 0.5);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 8), 0.25);
}

TEST(LrScheduleTest, CosineScheduleGoesFromBaseToEtaMinOverTMax) {
  v1::LrSchedule s;
  s.set_kind(v1::LrSchedule::KIND_COSINE);
  s.set_t_max(10);
  s.set_eta_min(0.01);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(0.1), s, 0), 0.1);
  EXPECT_NEAR(LearningRateAt(Lr(0.1), s, 5), (0.1 + 0.01) / 2, 1e-15);
  EXPECT_NEAR(LearningRateAt(Lr(0.1), s, 10), 0.01, 1e-15);
  // Periodic past t_max, as torch's closed form.
  EXPECT_NEAR(LearningRateAt(Lr(0.1), s, 20), 0.1, 1e-15);
}

TEST(LrScheduleTest, WarmupRisesLinearlyThenTheScheduleStartsFromItsOwnZero) {
  v1::LrSchedule s;
  s.set_kind(v1::LrSchedule::KIND_STEP);
  s.set_step_size(2);
  s.set_gamma(0.1);
  s.set_warmup_steps(4);
  s.set_warmup_start_factor(0.2);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 0), 0.2);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 2), 0.6);
  // Step 4 is the schedule's step 0; it decays two steps later.
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 4), 1.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(Lr(1.0), s, 5), 1.0);
  EXPECT_NEAR(LearningRateAt(Lr(1.0), s, 6), 0.1, 1e-15);
}

}  // namespace
}  // namespace gradacc
