// LossScaler: fp16 dynamic loss scaling as torch.amp.GradScaler does it
// (JobSpec.loss_scaling), held by the server: the scale each window is
// computed with, the factor that unscales its reduced gradient, and the
// scale's evolution after the window (backoff on an overflow, growth after
// growth_interval clean windows), in f32 as torch's _amp_update_scale_.
//
// Thread-compatible: the StepExecutor's (trainer thread).
#ifndef GRADACC_SERVER_LOSS_SCALER_H_
#define GRADACC_SERVER_LOSS_SCALER_H_

#include <cstdint>

#include "gradacc/v1/checkpoint.pb.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {

class LossScaler {
 public:
  // `spec` normalized (NormalizeJobSpec fills the defaults); absent = off.
  explicit LossScaler(const v1::JobSpec& spec);

  bool on() const { return on_; }
  // The scale of the open window (0 when off).
  float scale() const { return scale_; }
  uint32_t growth_tracker() const { return growth_tracker_; }
  // The last window Update saw overflowed (it was skipped).
  bool skipped() const { return skipped_; }
  // f32(1 / f64(scale)): torch's unscale factor.
  float inverse() const;
  // After a window: found_inf backs off, else the tracker counts towards
  // growth.
  void Update(bool found_inf);

  v1::LossScaleState Export() const;
  // A checkpoint's state (one without it, written before loss scaling
  // existed or by a job without it, keeps the initial scale).
  void Restore(const v1::CheckpointState& state);

 private:
  bool on_ = false;
  double growth_factor_ = 2.0;
  double backoff_factor_ = 0.5;
  uint32_t growth_interval_ = 2000;
  float scale_ = 0;
  uint32_t growth_tracker_ = 0;
  bool skipped_ = false;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_LOSS_SCALER_H_
