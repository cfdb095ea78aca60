// The CUDA backend: cuBLAS for the matrix products, small kernels for bias,
// ReLU and softmax cross-entropy. Same math and layout as the CPU backend
// (worker/training/model.cc); gradients are computed on the device per micro-batch
// and added into the caller's host buffer.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/training/model.h"

namespace gradacc {
namespace {

#define GRADACC_CUDA_OK(expr)                                                                         \
  do {                                                                                                \
    cudaError_t e_ = (expr);                                                                          \
    if (e_ != cudaSuccess) return absl::InternalError(absl::StrCat(#expr, ": ", cudaGetErrorString(e_))); \
  } while (0)
#define GRADACC_CUBLAS_OK(expr)                                                          \
  do {                                                                                   \
    cublasStatus_t s_ = (expr);                                                          \
    if (s_ != CUBLAS_STATUS_SUCCESS) return absl::InternalError(absl::StrCat(#expr, ": cublas status ", int(s_))); \
  } while (0)

__global__ void BroadcastBias(float* z, const float* b, int n, int out) {
  const long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  if (i < static_cast<long>(n) * out) z[i] = b[i % out];
}

__global__ void Relu(float* z, long count) {
  const long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  if (i < count) z[i] = z[i] > 0 ? z[i] : 0;
}

__global__ void ReluBackward(float* delta, const float* act, long count) {
  const long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x;
  if (i < count && !(act[i] > 0)) delta[i] = 0;
}

// One thread per sample: z becomes softmax(z) - onehot(y); loss[i] is the
// sample's cross-entropy.
__global__ void SoftmaxCrossEntropy(float* z, const unsigned char* y, double* loss, int n, int classes) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float* row = z + static_cast<long>(i) * classes;
  float m = row[0];
  for (int c = 1; c < classes; ++c) m = fmaxf(m, row[c]);
  double sum = 0;
  for (int c = 0; c < classes; ++c) sum += exp(static_cast<double>(row[c]) - m);
  loss[i] = log(sum) + m - row[y[i]];
  const float inv = static_cast<float>(1.0 / sum);
  for (int c = 0; c < classes; ++c) row[c] = expf(row[c] - m) * inv;
  row[y[i]] -= 1.0f;
}

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t size = 0;
  DeviceArray() = default;
  DeviceArray(DeviceArray&& o) noexcept : ptr(o.ptr), size(o.size) {
    o.ptr = nullptr;
    o.size = 0;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { cudaFree(ptr); }
  absl::Status Reserve(size_t n) {
    if (n <= size) return absl::OkStatus();
    cudaFree(ptr);
    ptr = nullptr;
    size = 0;
    GRADACC_CUDA_OK(cudaMalloc(&ptr, n * sizeof(T)));
    size = n;
    return absl::OkStatus();
  }
};

int Blocks(long count) { return static_cast<int>((count + 255) / 256); }

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const MlpShape& shape) : widths_(shape.widths()) {
    uint64_t off = 0;
    for (size_t l = 1; l < widths_.size(); ++l) {
      w_offset_.push_back(off);
      off += uint64_t{widths_[l]} * widths_[l - 1];
      b_offset_.push_back(off);
      off += widths_[l];
    }
    num_params_ = off;
  }
  ~CudaBackend() override {
    if (handle_ != nullptr) cublasDestroy(handle_);
  }

  absl::Status Init() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
      cudaGetLastError();
      return absl::FailedPreconditionError("--device=cuda: no CUDA GPU is visible on this machine; use --device=cpu");
    }
    GRADACC_CUBLAS_OK(cublasCreate(&handle_));
    // Exact f32 products, as the CPU backend (no TF32).
    GRADACC_CUBLAS_OK(cublasSetMathMode(handle_, CUBLAS_PEDANTIC_MATH));
    GRADACC_CUDA_OK(cudaGetDeviceProperties(&props_, 0));
    if (auto s = params_.Reserve(num_params_); !s.ok()) return s;
    if (auto s = grad_.Reserve(num_params_); !s.ok()) return s;
    host_grad_.resize(num_params_);
    return absl::OkStatus();
  }

  std::string name() const override { return absl::StrCat("cuda (", props_.name, ", cuBLAS)"); }

  absl::Status SetParameters(absl::Span<const float> params) override {
    if (params.size() != num_params_) return absl::InvalidArgumentError("parameter count mismatch");
    GRADACC_CUDA_OK(cudaMemcpy(params_.ptr, params.data(), num_params_ * sizeof(float), cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }

  absl::StatusOr<double> AccumulateGradients(const float* x, const uint8_t* y, uint32_t n,
                                             absl::Span<float> grad) override {
    if (grad.size() != num_params_) return absl::InvalidArgumentError("gradient size mismatch");
    if (n == 0) return 0.0;
    if (auto s = Upload(x, y, n); !s.ok()) return s;
    if (auto s = Forward(n); !s.ok()) return s;
    const size_t layers = widths_.size() - 1;
    const int classes = static_cast<int>(widths_.back());
    if (auto s = loss_.Reserve(n); !s.ok()) return s;
    float* dz = acts_[layers].ptr;
    SoftmaxCrossEntropy<<<Blocks(n), 256>>>(dz, y_.ptr, loss_.ptr, static_cast<int>(n), classes);
    GRADACC_CUDA_OK(cudaMemset(grad_.ptr, 0, num_params_ * sizeof(float)));
    if (auto s = ones_.Reserve(n); !s.ok()) return s;
    if (ones_filled_ < n) {
      std::vector<float> ones(n, 1.0f);
      GRADACC_CUDA_OK(cudaMemcpy(ones_.ptr, ones.data(), n * sizeof(float), cudaMemcpyHostToDevice));
      ones_filled_ = n;
    }
    const float one = 1.0f, zero = 0.0f;
    for (size_t l = layers; l >= 1; --l) {
      const int in = static_cast<int>(widths_[l - 1]), out = static_cast<int>(widths_[l]);
      const float* a_prev = l == 1 ? x_.ptr : acts_[l - 1].ptr;
      // dW^T (col-major [in, out]) += A^T dZ.
      GRADACC_CUBLAS_OK(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_T, in, out, static_cast<int>(n), &one, a_prev,
                                    in, dz, out, &one, grad_.ptr + w_offset_[l - 1], in));
      // db += dZ^T 1.
      GRADACC_CUBLAS_OK(cublasSgemv(handle_, CUBLAS_OP_N, out, static_cast<int>(n), &one, dz, out, ones_.ptr, 1,
                                    &one, grad_.ptr + b_offset_[l - 1], 1));
      if (l == 1) break;
      if (auto s = delta_.Reserve(uint64_t{n} * in); !s.ok()) return s;
      // dA^T (col-major [in, n]) = W^T dZ^T.
      GRADACC_CUBLAS_OK(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, in, static_cast<int>(n), out, &one,
                                    params_.ptr + w_offset_[l - 1], in, dz, out, &zero, delta_.ptr, in));
      const long count = static_cast<long>(n) * in;
      ReluBackward<<<Blocks(count), 256>>>(delta_.ptr, acts_[l - 1].ptr, count);
      // The next layer's dZ overwrites this layer's activations, no longer needed.
      GRADACC_CUDA_OK(cudaMemcpy(acts_[l - 1].ptr, delta_.ptr, count * sizeof(float), cudaMemcpyDeviceToDevice));
      dz = acts_[l - 1].ptr;
    }
    GRADACC_CUDA_OK(cudaMemcpy(host_grad_.data(), grad_.ptr, num_params_ * sizeof(float), cudaMemcpyDeviceToHost));
    std::vector<double> losses(n);
    GRADACC_CUDA_OK(cudaMemcpy(losses.data(), loss_.ptr, n * sizeof(double), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < num_params_; ++i) grad[i] += host_grad_[i];
    double total = 0;
    for (double v : losses) total += v;
    return total;
  }

  absl::StatusOr<uint64_t> CountCorrect(const float* x, const uint8_t* y, uint32_t n) override {
    constexpr uint32_t kBatch = 1000;
    const uint32_t classes = widths_.back();
    std::vector<float> logits;
    uint64_t correct = 0;
    for (uint32_t start = 0; start < n; start += kBatch) {
      const uint32_t m = std::min(kBatch, n - start);
      if (auto s = Upload(x + uint64_t{start} * widths_[0], y + start, m); !s.ok()) return s;
      if (auto s = Forward(m); !s.ok()) return s;
      logits.resize(uint64_t{m} * classes);
      GRADACC_CUDA_OK(cudaMemcpy(logits.data(), acts_.back().ptr, logits.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost));
      for (uint32_t i = 0; i < m; ++i) {
        const float* row = logits.data() + uint64_t{i} * classes;
        correct += static_cast<uint32_t>(std::max_element(row, row + classes) - row) == y[start + i];
      }
    }
    return correct;
  }

 private:
  absl::Status Upload(const float* x, const uint8_t* y, uint32_t n) {
    if (auto s = x_.Reserve(uint64_t{n} * widths_[0]); !s.ok()) return s;
    if (auto s = y_.Reserve(n); !s.ok()) return s;
    GRADACC_CUDA_OK(cudaMemcpy(x_.ptr, x, uint64_t{n} * widths_[0] * sizeof(float), cudaMemcpyHostToDevice));
    GRADACC_CUDA_OK(cudaMemcpy(y_.ptr, y, n, cudaMemcpyHostToDevice));
    return absl::OkStatus();
  }

  absl::Status Forward(uint32_t n) {
    const size_t layers = widths_.size() - 1;
    acts_.resize(layers + 1);
    const float one = 1.0f;
    for (size_t l = 1; l <= layers; ++l) {
      const int in = static_cast<int>(widths_[l - 1]), out = static_cast<int>(widths_[l]);
      if (auto s = acts_[l].Reserve(uint64_t{n} * out); !s.ok()) return s;
      const long count = static_cast<long>(n) * out;
      BroadcastBias<<<Blocks(count), 256>>>(acts_[l].ptr, params_.ptr + b_offset_[l - 1], static_cast<int>(n), out);
      const float* a_prev = l == 1 ? x_.ptr : acts_[l - 1].ptr;
      // Z^T (col-major [out, n]) += W A^T.
      GRADACC_CUBLAS_OK(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, out, static_cast<int>(n), in, &one,
                                    params_.ptr + w_offset_[l - 1], in, a_prev, in, &one, acts_[l].ptr, out));
      if (l < layers) Relu<<<Blocks(count), 256>>>(acts_[l].ptr, count);
    }
    GRADACC_CUDA_OK(cudaGetLastError());
    return absl::OkStatus();
  }

  const std::vector<uint32_t> widths_;
  std::vector<uint64_t> w_offset_, b_offset_;
  uint64_t num_params_ = 0;
  cublasHandle_t handle_ = nullptr;
  cudaDeviceProp props_{};
  DeviceArray<float> params_, grad_, x_, delta_, ones_;
  DeviceArray<unsigned char> y_;
  DeviceArray<double> loss_;
  std::vector<DeviceArray<float>> acts_;
  std::vector<float> host_grad_;
  uint32_t ones_filled_ = 0;
};

}  // namespace

bool BuiltWithCuda() { return true; }

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const MlpShape& shape) {
  auto backend = std::make_unique<CudaBackend>(shape);
  if (absl::Status s = backend->Init(); !s.ok()) return s;
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace gradacc
