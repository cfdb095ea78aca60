// Optimizers with torch.optim semantics (the single-tensor code path of
// PyTorch 1.13), applied to the flat f32 parameter vector. Every update is
// element-wise, so flat and per-tensor application are identical.
//
// Tensors without a gradient. As torch.optim skips a parameter whose .grad
// is None, a step may leave some tensors out (`stepped`): they keep their
// values and state, and their own step count does not advance — each
// tensor has one (SetTensors), as torch keeps a step and a momentum buffer
// per parameter, so a tensor's first step initialises its SGD momentum and
// its Adam bias corrections follow its own count. Without SetTensors the
// vector is one tensor.
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

#include "absl/status/status.h"
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
  // ParallelFor's threads), of the tensors `stepped` names (null: all).
  void Step(absl::Span<float> params, absl::Span<const float> grad, double lr,
            size_t min_per_thread = kParallelMinElements, const std::vector<bool>* stepped = nullptr);

  // One step applied piecewise: Prepare counts the step and returns a
  // function that updates elements [begin, end) of `params` (and of the
  // state) from `grad`, the gradient of exactly those elements. Pieces may
  // run concurrently on disjoint ranges; together they must cover every
  // element once. The bits are those of Step. `stepped[t]`: whether tensor
  // t (of SetTensors) takes part (null: every tensor).
  using Piece = std::function<void(size_t begin, size_t end, const float* grad)>;
  Piece Prepare(absl::Span<float> params, double lr, const std::vector<bool>* stepped = nullptr);

  // The tensors of the vector: tensor t is elements [bounds[t], bounds[t+1])
  // (bounds[0] = 0, the last = the vector's size). Every tensor starts with
  // steps() steps.
  void SetTensors(std::vector<uint64_t> bounds);
  size_t num_tensors() const { return bounds_.size() - 1; }

  // Steps applied so far (windows stepped), and each tensor's own count.
  uint64_t steps() const { return steps_; }
  const std::vector<uint64_t>& tensor_steps() const { return tensor_steps_; }

  // Named state buffers (for checkpoints).
  virtual std::vector<std::pair<std::string, FloatBuffer*>> StateBuffers() = 0;
  // Restoring: every tensor gets `steps` (a checkpoint without per-tensor
  // counts), then set_tensor_steps for one with them (one per tensor).
  void set_steps(uint64_t steps);
  absl::Status set_tensor_steps(const std::vector<uint64_t>& steps);

 protected:
  explicit Optimizer(uint64_t num_elements) : bounds_{0, num_elements}, tensor_steps_{0} {}
  // The piece of one step for tensors at their step number `step` (1 for a
  // tensor's first step).
  virtual Piece PrepareAt(absl::Span<float> params, double lr, uint64_t step) = 0;

 private:
  uint64_t steps_ = 0;
  std::vector<uint64_t> bounds_;
  std::vector<uint64_t> tensor_steps_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_OPTIMIZER_H_
