// LossScaler: torch.amp.GradScaler's scale evolution (backoff on an
// overflow, growth after growth_interval clean windows, in f32), its
// inverse, and its checkpoint state.
#include "server/loss_scaler.h"

#include <limits>

#include "gtest/gtest.h"

namespace gradacc {
namespace {

v1::JobSpec WithScaling(double init, double growth, double backoff, uint32_t interval) {
  v1::JobSpec spec;
  v1::LossScaling* ls = spec.mutable_loss_scaling();
  ls->set_init_scale(init);
  ls->set_growth_factor(growth);
  ls->set_backoff_factor(backoff);
  ls->set_growth_interval(interval);
  return spec;
}

TEST(LossScalerTest, OffWithoutLossScalingInTheSpec) {
  LossScaler scaler{v1::JobSpec()};
  EXPECT_FALSE(scaler.on());
  EXPECT_EQ(scaler.scale(), 0.0f);
}

TEST(LossScalerTest, OverflowBacksOffAndResetsTheGrowthTracker) {
  LossScaler scaler(WithScaling(65536, 2, 0.5, 3));
  ASSERT_TRUE(scaler.on());
  EXPECT_EQ(scaler.scale(), 65536.0f);
  scaler.Update(false);
  EXPECT_EQ(scaler.growth_tracker(), 1u);
  EXPECT_FALSE(scaler.skipped());
  scaler.Update(true);
  EXPECT_EQ(scaler.scale(), 32768.0f);
  EXPECT_EQ(scaler.growth_tracker(), 0u);
  EXPECT_TRUE(scaler.skipped());
}

TEST(LossScalerTest, ScaleGrowsAfterGrowthIntervalCleanWindows) {
  LossScaler scaler(WithScaling(1024, 2, 0.5, 3));
  scaler.Update(false);
  scaler.Update(false);
  EXPECT_EQ(scaler.scale(), 1024.0f);
  scaler.Update(false);  // the third clean window
  EXPECT_EQ(scaler.scale(), 2048.0f);
  EXPECT_EQ(scaler.growth_tracker(), 0u);
}

TEST(LossScalerTest, GrowthThatWouldOverflowF32KeepsTheScale) {
  const float big = std::numeric_limits<float>::max() / 2 * 1.5f;
  LossScaler scaler(WithScaling(big, 2, 0.5, 1));
  scaler.Update(false);
  EXPECT_EQ(scaler.scale(), big);
  EXPECT_EQ(scaler.growth_tracker(), 0u);
}

TEST(LossScalerTest, InverseIsTheF32OfTheDoubleReciprocal) {
  LossScaler scaler(WithScaling(3, 2, 0.5, 10));
  EXPECT_EQ(scaler.inverse(), static_cast<float>(1.0 / 3.0));
  // Backoff is in double, rounded to f32: 3 * 0.3 = 0.9 (as f32).
  LossScaler odd(WithScaling(3, 2, 0.3, 10));
  odd.Update(true);
  EXPECT_EQ(odd.scale(), static_cast<float>(3.0 * 0.3));
}

TEST(LossScalerTest, ExportedStateRestoresIntoAFreshScaler) {
  LossScaler scaler(WithScaling(256, 2, 0.5, 4));
  scaler.Update(true);
  scaler.Update(false);
  scaler.Update(false);
  v1::CheckpointState state;
  *state.mutable_loss_scale() = scaler.Export();
  LossScaler restored(WithScaling(256, 2, 0.5, 4));
  restored.Restore(state);
  EXPECT_EQ(restored.scale(), 128.0f);
  EXPECT_EQ(restored.growth_tracker(), 2u);
  EXPECT_FALSE(restored.skipped());
  // A checkpoint without loss-scale state keeps the initial scale.
  LossScaler fresh(WithScaling(256, 2, 0.5, 4));
  fresh.Restore(v1::CheckpointState());
  EXPECT_EQ(fresh.scale(), 256.0f);
}

}  // namespace
}  // namespace gradacc
