// Job specifications: loading, validation, defaults, the flat parameter
// layout and seeded initialisation. Free functions and an immutable value
// type; thread-safe.
#ifndef GRADACC_COMMON_JOB_SPEC_H_
#define GRADACC_COMMON_JOB_SPEC_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/buffer.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {

// Where each tensor lives in the flat f32 parameter (and gradient) vector:
// tensors are laid end to end in JobSpec order.
class ModelLayout {
 public:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> shape;
    uint64_t offset = 0;  // in elements, within the flat vector
    uint64_t size = 0;    // elements
  };

  ModelLayout() = default;
  static absl::StatusOr<ModelLayout> FromSpec(const v1::ModelSpec& model);

  const std::vector<Tensor>& tensors() const { return tensors_; }
  uint64_t num_elements() const { return num_elements_; }
  // Index of the tensor called `name`, or -1.
  int Find(absl::string_view name) const;

 private:
  std::vector<Tensor> tensors_;
  uint64_t num_elements_ = 0;
};

// A range of flat elements [begin, end).
struct FlatRange {
  uint64_t begin = 0;
  uint64_t end = 0;
  bool empty() const { return begin >= end; }
  uint64_t size() const { return empty() ? 0 : end - begin; }
};

// The flat elements of tensor `t` that lie inside [begin, end) (empty when
// none): a shard's part of a tensor.
FlatRange PartOf(const ModelLayout::Tensor& t, uint64_t begin, uint64_t end);

// The tensors whose parts lie in `range`, in job order: their indices, and
// where each part lies within the range (part i is [bounds[i],
// bounds[i + 1]); bounds[0] = 0, bounds.back() = range.size()).
struct TensorsOfRange {
  std::vector<uint32_t> ids;
  std::vector<uint64_t> bounds;
};
TensorsOfRange TensorsIn(const ModelLayout& layout, FlatRange range);

// The flat elements [begin, end) shard `shard` of `num_shards` owns:
// boundaries start at floor(i * N / num_shards) and move to the end of the
// tensor they fall in when that tensor is small (at most
// kShardSplitLimit elements), so small tensors are never split and global-norm
// clipping computes exactly what one server would.
inline constexpr uint64_t kShardSplitLimit = 4096;
std::pair<uint64_t, uint64_t> ShardRange(const ModelLayout& layout, uint32_t shard, uint32_t num_shards);

// Hard limits that protect the server from absurd specs and requests.
inline constexpr uint64_t kMaxModelElements = uint64_t{1} << 32;  // 16 GiB
inline constexpr uint32_t kMaxWorkers = 1 << 16;
inline constexpr size_t kMaxTensors = 1 << 16;

// Parses a job file: protobuf JSON when the name ends in ".json", protobuf
// text format otherwise. Does not validate.
absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path);

// Fills defaults (job_id "default", SGD, Adam betas/eps, 1 micro-batch,
// cosine t_max) and checks every field; the error names the field.
absl::Status NormalizeJobSpec(v1::JobSpec& spec);

// An MLP classifier: `inputs` -> hidden... -> `classes`, tensors named like
// PyTorch's nn.Sequential of nn.Linear: fc1.weight [h1, inputs], fc1.bias
// [h1], ..., initialised as nn.Linear does (fan-in uniform). No hidden layer
// gives softmax regression.
v1::ModelSpec MlpModelSpec(uint64_t inputs, const std::vector<uint64_t>& hidden,
                           uint64_t classes);

// The server's built-in job: the main job's Fashion-MNIST MLP (784-256-128-10),
// Adam (lr 2e-3, cosine schedule), 4 workers x 2 micro-batches of 16
// samples, 3 epochs (1407 steps).
v1::JobSpec DefaultJobSpec();

// Windows per epoch: ceil(worker_hints["train_samples"] / samples per window).
absl::StatusOr<uint64_t> StepsPerEpoch(const v1::JobSpec& spec);

// Initial parameters: from the safetensors file when the spec names one
// (relative paths resolve against `base_dir`), else from the seeded
// initialisers documented in job.proto.
absl::StatusOr<FloatBuffer> InitialParameters(const v1::JobSpec& spec,
                                              const std::string& base_dir = "");

// The counter-based generator of job.proto: u in [0, 1) for element j.
uint64_t SplitMix64(uint64_t z);
double UniformAt(uint64_t seed, uint64_t j);

}  // namespace gradacc

#endif  // GRADACC_COMMON_JOB_SPEC_H_
