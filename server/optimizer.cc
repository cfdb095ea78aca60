#include "server/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/parallel.h"

namespace gradacc {
namespace {

// PyTorch's CPU kernels compute `a.add(b, alpha=s)` and `addcmul_` with a
// fused multiply-add; so do these, which makes gradacc's trajectories match
// torch.optim bit for bit. target_clones picks the hardware FMA when the CPU
// has it; the default clone computes the same (correctly rounded) result.
// Built with -O3 -fno-math-errno (server/CMakeLists.txt) so the loops, once
// unswitched on their flags, vectorise: vector fma, sqrt and division round
// exactly as the scalar ones. Steps run on ParallelFor's threads over
// contiguous ranges; every update is element-wise, so the bits do not depend
// on the split.
// Not under ThreadSanitizer: a target_clones resolver (an ifunc) runs during
// relocation, before TSan's runtime is up, and crashes instrumented.
#define GRADACC_FMA_CLONES __attribute__((target_clones("fma", "default")))
#if defined(GRADACC_TSAN) || defined(__SANITIZE_THREAD__)
#undef GRADACC_FMA_CLONES
#define GRADACC_FMA_CLONES
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#undef GRADACC_FMA_CLONES
#define GRADACC_FMA_CLONES
#endif
#endif
GRADACC_FMA_CLONES void SgdKernel(
    float* __restrict p, const float* __restrict g, float* __restrict buf, size_t n, float neg_lr, float wd,
    float mom, float one_minus_damp, bool nesterov, bool first) {
  if (mom == 0) {
    for (size_t i = 0; i < n; ++i) {
      const float d = wd != 0 ? std::fma(wd, p[i], g[i]) : g[i];
      p[i] = std::fma(neg_lr, d, p[i]);
    }
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    float d = wd != 0 ? std::fma(wd, p[i], g[i]) : g[i];
    const float b = first ? d : std::fma(one_minus_damp, d, buf[i] * mom);
    buf[i] = b;
    d = nesterov ? std::fma(mom, b, d) : b;
    p[i] = std::fma(neg_lr, d, p[i]);
  }
}

// One loop per flag combination (branch-free, so it vectorises); inlined
// into each target clone of AdamKernel.
template <bool kWeightDecay, bool kDecoupled, bool kAmsgrad>
__attribute__((always_inline)) inline void AdamLoop(float* __restrict p, const float* __restrict g,
                                                    float* __restrict m, float* __restrict v,
                                                    float* __restrict vmax, size_t n, float b1, float one_minus_b1,
                                                    float b2, float one_minus_b2, float eps, float wd, float decay,
                                                    float neg_step_size, float bc2_sqrt) {
  for (size_t i = 0; i < n; ++i) {
    float gi = g[i];
    float pi = p[i];
    if (kWeightDecay) {
      if (kDecoupled) {
        pi *= decay;
      } else {
        gi = std::fma(wd, pi, gi);
      }
    }
    const float mi = std::fma(one_minus_b1, gi, m[i] * b1);
    const float vi = std::fma(one_minus_b2 * gi, gi, v[i] * b2);
    m[i] = mi;
    v[i] = vi;
    float second = vi;
    if (kAmsgrad) {
      second = std::max(vmax[i], vi);
      vmax[i] = second;
    }
    const float denom = std::sqrt(second) / bc2_sqrt + eps;
    p[i] = pi + (neg_step_size * mi) / denom;
  }
}

GRADACC_FMA_CLONES void AdamKernel(
    float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
    float* __restrict vmax, size_t n, float b1, float one_minus_b1, float b2, float one_minus_b2, float eps,
    float wd, float decay, float neg_step_size, float bc2_sqrt, bool has_wd, bool decoupled, bool amsgrad) {
#define GRADACC_ADAM(W, D, A) \
  AdamLoop<W, D, A>(p, g, m, v, vmax, n, b1, one_minus_b1, b2, one_minus_b2, eps, wd, decay, neg_step_size, bc2_sqrt)
  if (!has_wd) {
    if (amsgrad) GRADACC_ADAM(false, false, true); else GRADACC_ADAM(false, false, false);
  } else if (decoupled) {
    if (amsgrad) GRADACC_ADAM(true, true, true); else GRADACC_ADAM(true, true, false);
  } else {
    if (amsgrad) GRADACC_ADAM(true, false, true); else GRADACC_ADAM(true, false, false);
  }
#undef GRADACC_ADAM
}


// torch.optim.SGD, for-loop path:
//   d_p = grad + weight_decay * param
//   buf = d_p (first step) | momentum * buf + (1 - dampening) * d_p
//   d_p = d_p + momentum * buf (nesterov) | buf
//   param -= lr * d_p
class Sgd final : public Optimizer {
 public:
  Sgd(const v1::SgdOptions& o, uint64_t n)
      : Optimizer(n),
        momentum_(static_cast<float>(o.momentum())),
        one_minus_dampening_(static_cast<float>(1 - o.dampening())),
        weight_decay_(static_cast<float>(o.weight_decay())),
        nesterov_(o.nesterov()),
        momentum_buffer_(o.momentum() != 0 ? n : 0) {}

  Piece PrepareAt(absl::Span<float> params, double lr, uint64_t step) override {
    const bool first = step == 1;
    float* const p = params.data();
    float* const buf = momentum_buffer_.data();
    return [=](size_t b, size_t e, const float* g) {
      SgdKernel(p + b, g, buf == nullptr ? nullptr : buf + b, e - b, static_cast<float>(-lr), weight_decay_,
                momentum_, one_minus_dampening_, nesterov_, first);
    };
  }

  std::vector<std::pair<std::string, FloatBuffer*>> StateBuffers() override {
    if (momentum_buffer_.size() == 0) return {};
    return {{"momentum_buffer", &momentum_buffer_}};
  }

 private:
  const float momentum_;
  const float one_minus_dampening_;
  const float weight_decay_;
  const bool nesterov_;
  FloatBuffer momentum_buffer_;
};

// torch.optim.Adam / AdamW, for-loop path:
//   AdamW: param *= 1 - lr * weight_decay
//   Adam:  grad = grad + weight_decay * param
//   m = beta1 * m + (1 - beta1) * grad
//   v = beta2 * v + (1 - beta2) * grad * grad
//   vmax = max(vmax, v) (amsgrad)
//   denom = sqrt(v or vmax) / sqrt(1 - beta2^t) + eps
//   param -= lr / (1 - beta1^t) * m / denom
class Adam final : public Optimizer {
 public:
  Adam(const v1::AdamOptions& o, bool decoupled, uint64_t n)
      : Optimizer(n),
        beta1_(o.beta1()),
        beta2_(o.beta2()),
        eps_(o.eps()),
        weight_decay_(o.weight_decay()),
        amsgrad_(o.amsgrad()),
        decoupled_(decoupled),
        exp_avg_(n),
        exp_avg_sq_(n),
        max_exp_avg_sq_(o.amsgrad() ? n : 0) {}

  Piece PrepareAt(absl::Span<float> params, double lr, uint64_t step) override {
    const double t = static_cast<double>(step);
    const double bias_correction1 = 1 - std::pow(beta1_, t);
    const double bias_correction2 = 1 - std::pow(beta2_, t);
    const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
    const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
    float* const p = params.data();
    float* const m = exp_avg_.data();
    float* const v = exp_avg_sq_.data();
    float* const vmax = max_exp_avg_sq_.data();
    const float b1 = static_cast<float>(beta1_), one_minus_b1 = static_cast<float>(1 - beta1_);
    const float b2 = static_cast<float>(beta2_), one_minus_b2 = static_cast<float>(1 - beta2_);
    const float eps = static_cast<float>(eps_), wd = static_cast<float>(weight_decay_);
    const float decay = static_cast<float>(1 - lr * weight_decay_);
    const bool has_wd = weight_decay_ != 0, decoupled = decoupled_, amsgrad = amsgrad_;
    return [=](size_t b, size_t e, const float* g) {
      AdamKernel(p + b, g, m + b, v + b, vmax == nullptr ? nullptr : vmax + b, e - b, b1, one_minus_b1, b2,
                 one_minus_b2, eps, wd, decay, neg_step_size, bc2_sqrt, has_wd, decoupled, amsgrad);
    };
  }

  std::vector<std::pair<std::string, FloatBuffer*>> StateBuffers() override {
    std::vector<std::pair<std::string, FloatBuffer*>> out = {{"exp_avg", &exp_avg_},
                                                             {"exp_avg_sq", &exp_avg_sq_}};
    if (amsgrad_) out.emplace_back("max_exp_avg_sq", &max_exp_avg_sq_);
    return out;
  }

 private:
  const double beta1_, beta2_, eps_, weight_decay_;
  const bool amsgrad_, decoupled_;
  FloatBuffer exp_avg_, exp_avg_sq_, max_exp_avg_sq_;
};

}  // namespace

void Optimizer::Step(absl::Span<float> params, absl::Span<const float> grad, double lr, size_t min_per_thread,
                     const std::vector<bool>* stepped) {
  const Piece piece = Prepare(params, lr, stepped);
  ParallelFor(params.size(), [&](size_t b, size_t e) { piece(b, e, grad.data() + b); }, min_per_thread);
}

Optimizer::Piece Optimizer::Prepare(absl::Span<float> params, double lr, const std::vector<bool>* stepped) {
  ++steps_;
  const size_t n = num_tensors();
  // Each stepped tensor's piece, shared by the tensors at the same count
  // (all of them, unless some were left out of earlier windows).
  std::map<uint64_t, Piece> by_step;
  auto of_tensor = std::make_shared<std::vector<const Piece*>>(n, nullptr);
  bool all = true;
  for (size_t t = 0; t < n; ++t) {
    if (stepped != nullptr && !(*stepped)[t]) {
      all = false;
      continue;
    }
    const uint64_t step = ++tensor_steps_[t];
    auto [it, fresh] = by_step.try_emplace(step);
    if (fresh) it->second = PrepareAt(params, lr, step);
    (*of_tensor)[t] = &it->second;
  }
  if (all && by_step.size() == 1) return std::move(by_step.begin()->second);
  auto pieces = std::make_shared<std::map<uint64_t, Piece>>(std::move(by_step));
  return [pieces, of_tensor, bounds = bounds_](size_t b, size_t e, const float* g) {
    // The tensors [b, e) overlaps, each through its own piece (or none).
    size_t t = static_cast<size_t>(std::upper_bound(bounds.begin(), bounds.end(), b) - bounds.begin()) - 1;
    for (; t + 1 < bounds.size() && bounds[t] < e; ++t) {
      const size_t lo = std::max<size_t>(b, bounds[t]), hi = std::min<size_t>(e, bounds[t + 1]);
      if ((*of_tensor)[t] != nullptr && lo < hi) (*(*of_tensor)[t])(lo, hi, g + (lo - b));
    }
  };
}

void Optimizer::SetTensors(std::vector<uint64_t> bounds) {
  bounds_ = std::move(bounds);
  tensor_steps_.assign(num_tensors(), steps_);
}

void Optimizer::set_steps(uint64_t steps) {
  steps_ = steps;
  std::fill(tensor_steps_.begin(), tensor_steps_.end(), steps);
}

absl::Status Optimizer::set_tensor_steps(const std::vector<uint64_t>& steps) {
  if (steps.size() != tensor_steps_.size()) {
    return absl::DataLossError(absl::StrCat("checkpoint holds step counts of ", steps.size(), " tensors; this server "
                                            "steps ", tensor_steps_.size()));
  }
  for (uint64_t s : steps) {
    if (s > steps_) {
      return absl::DataLossError(absl::StrCat("checkpoint gives a tensor ", s, " steps, more than the ", steps_,
                                              " windows stepped"));
    }
  }
  tensor_steps_ = steps;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Optimizer>> Optimizer::Create(const v1::OptimizerSpec& spec,
                                                             uint64_t num_elements) {
  switch (spec.kind()) {
    case v1::OptimizerSpec::KIND_UNSPECIFIED:
    case v1::OptimizerSpec::KIND_SGD:
      return std::unique_ptr<Optimizer>(new Sgd(spec.sgd(), num_elements));
    case v1::OptimizerSpec::KIND_ADAM:
      return std::unique_ptr<Optimizer>(new Adam(spec.adam(), /*decoupled=*/false, num_elements));
    case v1::OptimizerSpec::KIND_ADAMW:
      return std::unique_ptr<Optimizer>(new Adam(spec.adam(), /*decoupled=*/true, num_elements));
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown optimizer kind ", spec.kind()));
  }
}

}  // namespace gradacc
