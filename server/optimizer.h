// Optimizers with torch.optim semantics (the single-tensor code path of
// PyTorch 1.13), applied to the flat f32 parameter vector. Every update is
// element-wise, so flat and per-tensor application are identical.
//
// Not thread-safe: the window state machine calls Step from one thread at a
// time. Owns its state buffers.
#ifndef GRADACC_SERVER_OPTIMIZER_H_
#define GRADACC_SERVER_OPTIMIZER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/buffer.h"
#include "common/parallel.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {

class Optimizer {
 public:
  // `spec` must have been normalised (NormalizeJobSpec).
  static absl::StatusOr<std::unique_ptr<Optimizer>> Create(const v1::OptimizerSpec& spec,
                                                           uint64_t num_elements);
  virtual ~Optimizer() = default;

  // One step: params -= update(grad) at learning rate `lr` (on
  // ParallelFor's threads).
  void Step(absl::Span<float> params, absl::Span<const float> grad, double lr,
            size_t min_per_thread = kParallelMinElements);

  // One step applied piecewise: Prepare counts the step and returns a
  // function that updates elements [begin, end) of `params` (and of the
  // state) from `grad`, the gradient of exactly those elements. Pieces may
  // run concurrently on disjoint ranges; together they must cover every
  // element once. The bits are those of Step.
  using Piece = std::function<void(size_t begin, size_t end, const float* grad)>;
  virtual Piece Prepare(absl::Span<float> params, double lr) = 0;

  // Steps applied so far.
  uint64_t steps() const { return steps_; }

  // Named state buffers (for checkpoints).
  virtual std::vector<std::pair<std::string, FloatBuffer*>> StateBuffers() = 0;
  void set_steps(uint64_t steps) { steps_ = steps; }

 protected:
  uint64_t steps_ = 0;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_OPTIMIZER_H_
