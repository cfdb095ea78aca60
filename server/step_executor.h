// StepExecutor: the step of one closed window on the parameters this server
// owns — reduce the contributions, agree on the global norm with the other
// shards, clip as torch.nn.utils.clip_grad_norm_ does, and apply the
// optimizer (fused into the reduction when nothing needs the norm first);
// with loss scaling, unscale first and skip a window whose gradient is not
// finite (server/loss_scaler.h).
//
// Owns the parameters (possibly a view of the shared-memory parameter
// segment, whose owner must outlive it), the optimizer and its scratch.
// Thread-safety: Run and the checkpoint accessors are for the trainer
// thread only; Parameters() may be called from any thread (it takes the
// step lock, which Run holds only while it changes the parameters, never
// while it waits for other shards).
#ifndef GRADACC_SERVER_STEP_EXECUTOR_H_
#define GRADACC_SERVER_STEP_EXECUTOR_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/buffer.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "gradacc/v1/job.pb.h"
#include "server/loss_scaler.h"
#include "server/norm_exchange.h"
#include "server/optimizer.h"
#include "server/reducer.h"
#include "server/window.h"

namespace gradacc {

struct StepReport {
  uint64_t samples = 0;
  double loss_sum = 0;
  float grad_norm = 0;     // of the reduced gradient, before clipping
  float clipped_norm = 0;  // after clipping
  double lr = 0;
  // The job indices of the tensors in range that no contribution touched
  // (not stepped).
  std::vector<uint32_t> unstepped;
  // Loss scaling (JobSpec.loss_scaling): the window's scale, whether its
  // unscaled gradient was not finite (then nothing was stepped), and the
  // next window's scale.
  float loss_scale = 0;
  bool skipped = false;
  float next_loss_scale = 0;
  absl::Duration reduce_time;
  absl::Duration apply_time;
};

class StepExecutor {
 public:
  StepExecutor(const v1::JobSpec* spec, const ModelLayout* layout, FlatRange range, uint32_t num_shards,
               FloatBuffer params, std::unique_ptr<Optimizer> optimizer, ReducerOptions options);

  // Steps `window` (the slots' grad_norm are filled in). `exchange` is
  // needed when sharded and clipping; `before_write` runs just before the
  // parameters start to change (the shared-memory seqlock turns odd).
  // CANCELLED (from the exchange) means the step was abandoned and nothing
  // changed.
  absl::StatusOr<StepReport> Run(ClosingWindow& window, NormExchange* exchange,
                                 const std::function<void()>& before_write);

  // A copy of the parameters (any thread).
  std::vector<float> Parameters() const;
  // Trainer thread: the parameters and the optimizer state as they are now.
  absl::Span<const float> params() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return params_.span(); }
  std::vector<std::pair<std::string, const FloatBuffer*>> OptimizerState() const;
  uint64_t optimizer_steps() const { return optimizer_->steps(); }
  // Each tensor's own step count (the tensors of this server's range).
  const std::vector<uint64_t>& tensor_steps() const { return optimizer_->tensor_steps(); }
  // Loss scaling: the open window's scale (0 when off) and its durable
  // state.
  const LossScaler& loss_scaler() const { return scaler_; }
  void RestoreLossScale(const v1::CheckpointState& state) { scaler_.Restore(state); }

 private:
  float Divisor(const ClosingWindow& w, uint64_t samples) const;
  // Which of this range's tensors some contribution touched
  // (PushHeader.untouched_tensors); empty when every one was.
  std::vector<bool> Stepped(const ClosingWindow& w) const;
  // The global norm of reduced_ (agreed with the other shards), and
  // whether any shard's part is not finite (`found_inf` in: this one's).
  absl::StatusOr<float> GlobalNorm(uint64_t window, absl::Span<const float> grad, NormExchange* exchange,
                                   std::vector<float>* tensor_sums, bool* found_inf);
  // Loss scaling: grad *= the window's inverse scale; whether it has a NaN
  // or Inf then.
  bool Unscale(absl::Span<float> grad);
  // Loss scaling: records the window's scale and skip in `r` and moves the
  // scale on (GradScaler.update); true: the window is skipped.
  bool UpdateLossScale(bool found_inf, StepReport* r);
  // What to reduce, in worker order (the Accumulator's sources, or the
  // slots with a gradient of their own: a covered worker's has none), each
  // with its slot (null for the running sum), and the window's samples and
  // loss into `r`.
  void Gather(ClosingWindow& window, std::vector<const float*>* sources, std::vector<Slot*>* with_gradient,
              StepReport* r) const;
  // Each contribution's norm for the ledger: from `squares` (per source),
  // or from what its chunks measured.
  void SetNorms(ClosingWindow& window, const std::vector<Slot*>& with_gradient,
                const std::vector<double>& squares) const;

  const v1::JobSpec* const spec_;
  const FlatRange range_;
  const uint32_t num_shards_;
  const std::vector<uint32_t> tensor_ids_;  // the job indices of the tensors in range_
  const Reducer reducer_;
  mutable Mutex mu_;  // the step lock
  FloatBuffer params_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Optimizer> optimizer_;
  LossScaler scaler_;  // trainer thread only
  FloatBuffer reduced_;  // trainer thread only; allocated by the first unfused step not done in place
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_STEP_EXECUTOR_H_
