// Optimizers with torch.optim semantics (the single-tensor code path of
// PyTorch 1.13), applied to the flat f32 parameter vector. Every update is
// element-wise, so flat and per-tensor application are identical.
//
// Not thread-safe: the window state machine calls Step from one thread at a
// time. Owns its state buffers.
#ifndef GRADACC_SERVER_OPTIMIZER_H_
#define GRADACC_SERVER_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/buffer.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {

class Optimizer {
 public:
  // `spec` must have been normalised (NormalizeJobSpec).
  static absl::StatusOr<std::unique_ptr<Optimizer>> Create(const v1::OptimizerSpec& spec,
                                                           uint64_t num_elements);
  virtual ~Optimizer() = default;

  // One step: params -= update(grad) at learning rate `lr`.
  virtual void Step(absl::Span<float> params, absl::Span<const float> grad, double lr) = 0;

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
