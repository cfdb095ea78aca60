#include "worker/training/model.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/job_spec.h"

namespace gradacc {

std::vector<uint32_t> MlpShape::widths() const {
  std::vector<uint32_t> w = {inputs};
  w.insert(w.end(), hidden.begin(), hidden.end());
  w.push_back(classes);
  return w;
}

uint64_t MlpShape::num_parameters() const {
  const auto w = widths();
  uint64_t n = 0;
  for (size_t l = 1; l < w.size(); ++l) n += uint64_t{w[l]} * w[l - 1] + w[l];
  return n;
}

v1::ModelSpec MlpShape::ToModelSpec() const {
  return MlpModelSpec(inputs, std::vector<uint64_t>(hidden.begin(), hidden.end()), classes);
}

absl::StatusOr<MlpShape> ParseModel(const std::string& model, const std::string& hidden, uint32_t inputs,
                                    uint32_t classes) {
  MlpShape shape;
  shape.inputs = inputs;
  shape.classes = classes;
  if (model == "softmax") return shape;
  if (model != "mlp") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown model '", model, "'; known: mlp (with --hidden=W1,W2,...), softmax"));
  }
  for (absl::string_view part : absl::StrSplit(hidden, ',', absl::SkipWhitespace())) {
    uint32_t w = 0;
    if (!absl::SimpleAtoi(part, &w) || w == 0 || w > (1u << 16)) {
      return absl::InvalidArgumentError(absl::StrCat("bad --hidden width '", part, "' in '", hidden, "'"));
    }
    shape.hidden.push_back(w);
  }
  return shape;
}

absl::Status CheckModelMatchesJob(const MlpShape& shape, const v1::JobSpec& job) {
  const v1::ModelSpec mine = shape.ToModelSpec();
  auto describe = [](const v1::ModelSpec& m) {
    std::vector<std::string> parts;
    for (const auto& t : m.tensors()) parts.push_back(absl::StrCat(t.name(), "[", absl::StrJoin(t.shape(), ","), "]"));
    return absl::StrJoin(parts, " ");
  };
  bool same = mine.tensors_size() == job.model().tensors_size();
  for (int i = 0; same && i < mine.tensors_size(); ++i) {
    same = mine.tensors(i).name() == job.model().tensors(i).name() &&
           std::equal(mine.tensors(i).shape().begin(), mine.tensors(i).shape().end(),
                      job.model().tensors(i).shape().begin(), job.model().tensors(i).shape().end());
  }
  if (!same) {
    return absl::FailedPreconditionError(absl::StrCat("this worker's model (", describe(mine),
                                                      ") is not the server's job model (", describe(job.model()),
                                                      "); pass the matching --model/--hidden"));
  }
  return absl::OkStatus();
}

namespace {

// Row-major throughout. Layer l maps [n, in_l] -> [n, out_l] with
// W_l [out_l, in_l]: Z = A W^T + b.
class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const MlpShape& shape) : widths_(shape.widths()) {
    uint64_t off = 0;
    for (size_t l = 1; l < widths_.size(); ++l) {
      w_offset_.push_back(off);
      off += uint64_t{widths_[l]} * widths_[l - 1];
      b_offset_.push_back(off);
      off += widths_[l];
    }
    params_.resize(off);
  }

  std::string name() const override { return "cpu (OpenBLAS)"; }

  absl::Status SetParameters(absl::Span<const float> params) override {
    if (params.size() != params_.size()) return absl::InvalidArgumentError("parameter count mismatch");
    std::copy(params.begin(), params.end(), params_.begin());
    return absl::OkStatus();
  }

  absl::StatusOr<double> AccumulateGradients(const float* x, const uint8_t* y, uint32_t n,
                                             absl::Span<float> grad) override {
    if (grad.size() != params_.size()) return absl::InvalidArgumentError("gradient size mismatch");
    if (n == 0) return 0.0;
    Forward(x, n);
    const size_t layers = widths_.size() - 1;
    const uint32_t classes = widths_.back();
    // dZ of the last layer = softmax(Z) - onehot(y): gradient of the summed
    // cross-entropy. The loss uses log-sum-exp for stability.
    std::vector<float>& dz = delta_;
    dz.assign(acts_[layers].begin(), acts_[layers].end());
    double loss = 0;
    for (uint32_t i = 0; i < n; ++i) {
      float* z = dz.data() + uint64_t{i} * classes;
      const float m = *std::max_element(z, z + classes);
      double sum = 0;
      for (uint32_t c = 0; c < classes; ++c) sum += std::exp(double{z[c]} - m);
      loss += std::log(sum) + m - z[y[i]];
      const float inv = static_cast<float>(1.0 / sum);
      for (uint32_t c = 0; c < classes; ++c) z[c] = std::exp(z[c] - m) * inv;
      z[y[i]] -= 1.0f;
    }
    // The micro-batch's gradient is formed whole, then added to the
    // window's buffer: micro-batches then combine exactly as contributions
    // do on the server (one sum per micro-batch, added in order), so
    // different worker x micro-batch arrangements differ only in how those
    // sums associate.
    mb_grad_.assign(params_.size(), 0.0f);
    for (size_t l = layers; l >= 1; --l) {
      const uint32_t in = widths_[l - 1], out = widths_[l];
      const float* a_prev = l == 1 ? x : acts_[l - 1].data();
      // dW = dZ^T A_prev : [out, n] x [n, in].
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dz.data(), out, a_prev, in, 0.0f,
                  mb_grad_.data() + w_offset_[l - 1], in);
      float* db = mb_grad_.data() + b_offset_[l - 1];
      for (uint32_t i = 0; i < n; ++i) {
        const float* row = dz.data() + uint64_t{i} * out;
        for (uint32_t o = 0; o < out; ++o) db[o] += row[o];
      }
      if (l == 1) break;
      // dA_prev = dZ W : [n, out] x [out, in]; then through the ReLU.
      prev_delta_.resize(uint64_t{n} * in);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dz.data(), out,
                  params_.data() + w_offset_[l - 1], in, 0.0f, prev_delta_.data(), in);
      const std::vector<float>& z_prev = acts_[l - 1];  // post-ReLU: > 0 where the unit was active
      for (size_t i = 0; i < prev_delta_.size(); ++i) {
        if (!(z_prev[i] > 0)) prev_delta_[i] = 0;
      }
      dz.swap(prev_delta_);
    }
    float* __restrict g = grad.data();
    const float* __restrict m = mb_grad_.data();
    for (size_t i = 0; i < mb_grad_.size(); ++i) g[i] += m[i];
    return loss;
  }

  absl::StatusOr<uint64_t> CountCorrect(const float* x, const uint8_t* y, uint32_t n) override {
    uint64_t correct = 0;
    constexpr uint32_t kBatch = 1000;
    const uint32_t classes = widths_.back();
    for (uint32_t start = 0; start < n; start += kBatch) {
      const uint32_t m = std::min(kBatch, n - start);
      Forward(x + uint64_t{start} * widths_[0], m);
      const std::vector<float>& z = acts_.back();
      for (uint32_t i = 0; i < m; ++i) {
        const float* row = z.data() + uint64_t{i} * classes;
        correct += static_cast<uint32_t>(std::max_element(row, row + classes) - row) == y[start + i];
      }
    }
    return correct;
  }

 private:
  // acts_[l] = output of layer l (ReLU applied except on the last).
  void Forward(const float* x, uint32_t n) {
    const size_t layers = widths_.size() - 1;
    acts_.resize(layers + 1);
    for (size_t l = 1; l <= layers; ++l) {
      const uint32_t in = widths_[l - 1], out = widths_[l];
      std::vector<float>& z = acts_[l];
      z.resize(uint64_t{n} * out);
      const float* b = params_.data() + b_offset_[l - 1];
      for (uint32_t i = 0; i < n; ++i) std::copy(b, b + out, z.data() + uint64_t{i} * out);
      const float* a_prev = l == 1 ? x : acts_[l - 1].data();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, a_prev, in,
                  params_.data() + w_offset_[l - 1], in, 1.0f, z.data(), out);
      if (l < layers) {
        for (float& v : z) v = v > 0 ? v : 0;
      }
    }
  }

  const std::vector<uint32_t> widths_;
  std::vector<uint64_t> w_offset_, b_offset_;
  std::vector<float> params_;
  std::vector<std::vector<float>> acts_;
  std::vector<float> delta_, prev_delta_, mb_grad_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(const MlpShape& shape) { return std::make_unique<CpuBackend>(shape); }

#ifndef GRADACC_HAVE_CUDA
bool BuiltWithCuda() { return false; }
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const MlpShape&) {
  return absl::FailedPreconditionError(
      "--device=cuda: this gradacc was built without CUDA (no CUDA toolkit was found at configure time); "
      "use --device=cpu");
}
#endif

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, const MlpShape& shape) {
  if (device == "cpu") return MakeCpuBackend(shape);
  if (device == "cuda") return MakeCudaBackend(shape);
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", device, "'; known: cpu, cuda"));
}

}  // namespace gradacc
