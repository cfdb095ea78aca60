// The built-in model and its compute backends.
//
// An MLP classifier: inputs -> hidden... -> classes, ReLU between layers,
// softmax cross-entropy; no hidden layer is softmax regression. Parameters
// are laid out as common/job_spec.h's MlpModelSpec (fc1.weight [h1, in],
// fc1.bias [h1], ...). Backends compute the gradient of the SUMMED loss of a
// micro-batch and ADD it into the caller's gradient buffer, which is how
// gradients accumulate over a window.
//
// A backend is not thread-safe; each worker owns one.
#ifndef GRADACC_WORKER_TRAINING_MODEL_H_
#define GRADACC_WORKER_TRAINING_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {

struct MlpShape {
  uint32_t inputs = 784;
  std::vector<uint32_t> hidden;
  uint32_t classes = 10;

  // widths[0] = inputs, ..., widths.back() = classes.
  std::vector<uint32_t> widths() const;
  uint64_t num_parameters() const;
  v1::ModelSpec ToModelSpec() const;
};

// Parses "--model" and "--hidden" ("mlp" + "256,128", or "softmax").
absl::StatusOr<MlpShape> ParseModel(const std::string& model, const std::string& hidden, uint32_t inputs,
                                    uint32_t classes);
// OK when the job's tensors are exactly the MLP's (names, order, shapes).
absl::Status CheckModelMatchesJob(const MlpShape& shape, const v1::JobSpec& job);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Installs parameters (flat, MlpModelSpec order).
  virtual absl::Status SetParameters(absl::Span<const float> params) = 0;
  // Forward and backward over n samples (x: n rows of `inputs` floats; y:
  // labels): adds d(sum of losses)/d(params) into `grad` and returns the
  // sum of the losses.
  virtual absl::StatusOr<double> AccumulateGradients(const float* x, const uint8_t* y, uint32_t n,
                                                     absl::Span<float> grad) = 0;
  // Correct top-1 predictions among n samples.
  virtual absl::StatusOr<uint64_t> CountCorrect(const float* x, const uint8_t* y, uint32_t n) = 0;
};

// OpenBLAS (CBLAS sgemm) for every matrix product.
std::unique_ptr<Backend> MakeCpuBackend(const MlpShape& shape);
// cuBLAS plus small kernels; an error when this build has no CUDA or the
// machine has no GPU.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const MlpShape& shape);
bool BuiltWithCuda();
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, const MlpShape& shape);

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_MODEL_H_
