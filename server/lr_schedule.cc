#include "server/lr_schedule.h"

#include <cmath>

namespace gradacc {

double LearningRateAt(const v1::OptimizerSpec& optimizer, const v1::LrSchedule& s, uint64_t step) {
  const double base = optimizer.lr();
  if (step < s.warmup_steps()) {
    const double f = s.warmup_start_factor();
    return base * (f + (1.0 - f) * static_cast<double>(step) / static_cast<double>(s.warmup_steps()));
  }
  const uint64_t t = step - s.warmup_steps();
  switch (s.kind()) {
    case v1::LrSchedule::KIND_STEP:
      return base * std::pow(s.gamma(), static_cast<double>(t / s.step_size()));
    case v1::LrSchedule::KIND_COSINE: {
      const double tt = static_cast<double>(t);  // periodic past t_max, as torch
      return s.eta_min() + (base - s.eta_min()) * (1 + std::cos(M_PI * tt / static_cast<double>(s.t_max()))) / 2;
    }
    default:
      return base;
  }
}

}  // namespace gradacc
