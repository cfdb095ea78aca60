#include "server/loss_scaler.h"

#include <cmath>

namespace gradacc {

LossScaler::LossScaler(const v1::JobSpec& spec) : on_(spec.has_loss_scaling()) {
  if (!on_) return;
  const v1::LossScaling& ls = spec.loss_scaling();
  growth_factor_ = ls.growth_factor();
  backoff_factor_ = ls.backoff_factor();
  growth_interval_ = ls.growth_interval();
  scale_ = static_cast<float>(ls.init_scale());
}

float LossScaler::inverse() const { return static_cast<float>(1.0 / static_cast<double>(scale_)); }

void LossScaler::Update(bool found_inf) {
  // torch/aten's _amp_update_scale_cpu_kernel (the CUDA kernel is the same):
  // the f32 scale times a double factor, rounded back to f32.
  skipped_ = found_inf;
  if (found_inf) {
    scale_ = static_cast<float>(static_cast<double>(scale_) * backoff_factor_);
    growth_tracker_ = 0;
    return;
  }
  const uint32_t successful = growth_tracker_ + 1;
  if (successful == growth_interval_) {
    const float grown = static_cast<float>(static_cast<double>(scale_) * growth_factor_);
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  } else {
    growth_tracker_ = successful;
  }
}

v1::LossScaleState LossScaler::Export() const {
  v1::LossScaleState s;
  s.set_scale(scale_);
  s.set_growth_tracker(growth_tracker_);
  s.set_skipped(skipped_);
  return s;
}

void LossScaler::Restore(const v1::CheckpointState& state) {
  if (!on_ || !state.has_loss_scale()) return;
  scale_ = state.loss_scale().scale();
  growth_tracker_ = state.loss_scale().growth_tracker();
  skipped_ = state.loss_scale().skipped();
}

}  // namespace gradacc
