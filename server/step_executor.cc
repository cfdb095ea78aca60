#include "server/step_executor.h"

#include <algorithm>
#include <cmath>

#include "common/kernels.h"
#include "common/status_macros.h"
#include "common/torch_norm.h"
#include "server/lr_schedule.h"

namespace gradacc {

StepExecutor::StepExecutor(const v1::JobSpec* spec, const ModelLayout* layout, FlatRange range,
                           uint32_t num_shards, FloatBuffer params, std::unique_ptr<Optimizer> optimizer,
                           ReducerOptions options)
    : spec_(spec),
      range_(range),
      num_shards_(num_shards),
      tensor_ids_(TensorsIn(*layout, range).ids),
      reducer_(layout, range, options),
      params_(std::move(params)),
      optimizer_(std::move(optimizer)),
      scaler_(*spec) {}

float StepExecutor::Divisor(const ClosingWindow& w, uint64_t samples) const {
  switch (spec_->reduction()) {
    case v1::REDUCTION_MEAN_OVER_SAMPLES:
      return static_cast<float>(samples);
    case v1::REDUCTION_MEAN_OVER_CONTRIBUTIONS:
      return static_cast<float>(w.slots.size());
    default:
      return 0;
  }
}

std::vector<bool> StepExecutor::Stepped(const ClosingWindow& w) const {
  std::vector<bool> stepped(tensor_ids_.size(), false);
  size_t count = 0;
  bool any = false;
  for (const Slot& slot : w.slots) {
    // A covered worker's slot has no gradient of its own: its pusher's
    // list speaks for it.
    if (!Contributes(slot)) continue;
    any = true;
    if (slot.untouched.empty()) return {};
    // Both lists are increasing: one merge.
    auto u = slot.untouched.begin();
    for (size_t i = 0; i < tensor_ids_.size(); ++i) {
      while (u != slot.untouched.end() && *u < tensor_ids_[i]) ++u;
      if (!stepped[i] && (u == slot.untouched.end() || *u != tensor_ids_[i])) {
        stepped[i] = true;
        ++count;
      }
    }
    if (count == stepped.size()) return {};
  }
  // No contribution at all (a window without sources) steps as before.
  if (!any) return {};
  return stepped;
}

void StepExecutor::Gather(ClosingWindow& window, std::vector<const float*>* sources, std::vector<Slot*>* with_gradient,
                          StepReport* r) const {
  for (Slot& slot : window.slots) {
    if (!Contributes(slot)) continue;  // covered by another worker's push
    r->samples += slot.samples;
    r->loss_sum += slot.loss_sum;
  }
  if (window.sources.has_value()) {
    // The Accumulator's: the running sum (no slot of its own), then whole
    // buffers of the workers after it.
    const WindowSources& from = *window.sources;
    for (size_t k = 0; k < from.data.size(); ++k) {
      Slot* slot = nullptr;
      for (size_t i = 0; i < window.workers.size() && from.worker[k] >= 0; ++i) {
        if (window.workers[i] == static_cast<uint32_t>(from.worker[k])) slot = &window.slots[i];
      }
      sources->push_back(from.data[k]);
      with_gradient->push_back(slot);
    }
    return;
  }
  for (Slot& slot : window.slots) {
    if (slot.grad.size() == 0) continue;
    sources->push_back(slot.grad.data());
    with_gradient->push_back(&slot);
  }
}

void StepExecutor::SetNorms(ClosingWindow& window, const std::vector<Slot*>& with_gradient,
                            const std::vector<double>& squares) const {
  // A contribution's norm is reported unscaled (loss scaling).
  const double unscale = scaler_.on() ? scaler_.inverse() : 1.0;
  for (size_t k = 0; k < with_gradient.size(); ++k) {
    if (with_gradient[k] != nullptr) with_gradient[k]->grad_norm = std::sqrt(squares[k]) * unscale;
  }
  // Measured as their chunks arrived (gRPC pushes), or when their segment
  // was folded into the running sum.
  for (Slot& slot : window.slots) {
    if (slot.sum_of_squares.has_value()) slot.grad_norm = std::sqrt(*slot.sum_of_squares) * unscale;
  }
  if (!window.sources.has_value()) return;
  for (const auto& [worker, squares] : window.sources->folded_squares) {
    for (size_t i = 0; i < window.workers.size(); ++i) {
      if (window.workers[i] == worker) window.slots[i].grad_norm = std::sqrt(squares) * unscale;
    }
  }
}

bool StepExecutor::UpdateLossScale(bool found_inf, StepReport* r) {
  r->loss_scale = scaler_.scale();
  r->skipped = found_inf;
  scaler_.Update(found_inf);
  r->next_loss_scale = scaler_.scale();
  return found_inf;
}

bool StepExecutor::Unscale(absl::Span<float> grad) {
  const float inverse = scaler_.inverse();
  const size_t min = reducer_.options().parallel_min_elements;
  ParallelFor(
      grad.size(), [&](size_t b, size_t e) { ScaleInPlace(grad.subspan(b, e - b), inverse); }, min);
  return FirstNonFiniteParallel(grad, min) >= 0;
}

absl::StatusOr<float> StepExecutor::GlobalNorm(uint64_t window, absl::Span<const float> grad, NormExchange* exchange,
                                               std::vector<float>* tensor_sums, bool* found_inf) {
  const bool sharded = num_shards_ > 1 && exchange != nullptr;
  TorchNormState carry;
  const TorchNormState* carry_in = nullptr;
  if (sharded && reducer_.StartsMidTensor()) {
    GRADACC_ASSIGN_OR_RETURN(carry, exchange->CarryIn(window));
    carry_in = &carry;
  }
  NormPart local = reducer_.TensorNorms(grad, carry_in);
  local.found_inf = *found_inf;
  if (sharded) {
    GRADACC_ASSIGN_OR_RETURN(NormTotals totals, exchange->Exchange(window, local));
    *tensor_sums = std::move(totals.sums);
    *found_inf = totals.found_inf;
  } else {
    *tensor_sums = std::move(local.finished);
  }
  return TorchTotalNorm(*tensor_sums);
}

absl::StatusOr<StepReport> StepExecutor::Run(ClosingWindow& window, NormExchange* exchange,
                                             const std::function<void()>& before_write) {
  StepReport r;
  const absl::Time t0 = absl::Now();
  std::vector<const float*> sources;
  std::vector<Slot*> with_gradient;
  Gather(window, &sources, &with_gradient, &r);
  const float divisor = Divisor(window, r.samples);
  // A window without samples (possible only when every contribution was
  // empty) has no gradient.
  const bool no_gradient =
      sources.empty() || (spec_->reduction() == v1::REDUCTION_MEAN_OVER_SAMPLES && r.samples == 0);
  r.lr = LearningRateAt(spec_->optimizer(), spec_->schedule(), window.window);
  const std::vector<bool> stepped = Stepped(window);
  for (size_t i = 0; i < stepped.size(); ++i) {
    if (!stepped[i]) r.unstepped.push_back(tensor_ids_[i]);
  }
  const float max_norm = static_cast<float>(spec_->clipping().max_norm());
  if (max_norm <= 0 && !no_gradient && !scaler_.on()) {
    // Nothing needs the norm before the step: one pass over memory reduces,
    // measures and steps each piece. A shard does not wait for the others
    // either (its part's norm is what it reports), so each shard publishes
    // as soon as its part is in and workers can pull it while they push the
    // next shards.
    MutexLock lock(&mu_);
    before_write();
    const Optimizer::Piece step = optimizer_->Prepare(params_.span(), r.lr, stepped.empty() ? nullptr : &stepped);
    const Reducer::FusedSums sums = reducer_.Fused(sources, divisor, step);
    SetNorms(window, with_gradient, sums.sources);
    std::vector<float> tensor_sums(sums.tensors.begin(), sums.tensors.end());
    r.grad_norm = r.clipped_norm = TorchTotalNorm(tensor_sums);
    r.reduce_time = absl::Now() - t0;
    return r;
  }
  // The reduced gradient in memory: only this path needs it. A window whose
  // only source is the Accumulator's running sum is reduced in place (the
  // same division, element by element); else into reduced_ (allocated on
  // first use: the fused path above never holds it).
  float* const in_place = window.sources.has_value() ? window.sources->only_running_sum : nullptr;
  if (in_place == nullptr && reduced_.size() != range_.size()) reduced_ = FloatBuffer(range_.size());
  const absl::Span<float> grad = in_place != nullptr ? absl::MakeSpan(in_place, range_.size()) : reduced_.span();
  // Measured before a reduction in place overwrites the running sum (which
  // has no slot: its contributions measured their chunks).
  std::vector<double> squares(sources.size(), 0.0);
  for (size_t k = 0; k < sources.size(); ++k) {
    if (with_gradient[k] != nullptr) squares[k] = reducer_.SourceSquares(sources[k]);
  }
  bool found_inf = false;
  if (no_gradient) {
    std::fill(grad.begin(), grad.end(), 0.0f);
  } else {
    if (in_place != nullptr) {
      if (divisor != 0) {
        ParallelFor(
            grad.size(), [&](size_t b, size_t e) { DivideInPlace(grad.subspan(b, e - b), divisor); },
            reducer_.options().parallel_min_elements);
      }
    } else {
      reducer_.Sum(grad, sources, divisor);
    }
    // GradScaler.unscale_ before clipping and the step.
    if (scaler_.on()) found_inf = Unscale(grad);
  }
  SetNorms(window, with_gradient, squares);
  const absl::Time t1 = absl::Now();
  r.reduce_time = t1 - t0;
  std::vector<float> tensor_sums;
  GRADACC_ASSIGN_OR_RETURN(r.grad_norm, GlobalNorm(window.window, grad, exchange, &tensor_sums, &found_inf));
  r.clipped_norm = r.grad_norm;
  if (scaler_.on() && UpdateLossScale(found_inf, &r)) {
    // GradScaler.step skips optimizer.step(): nothing changes (the
    // parameter segment's seqlock still turns, as for any version).
    MutexLock lock(&mu_);
    before_write();
    r.apply_time = absl::Now() - t1;
    return r;
  }
  if (max_norm > 0) {
    // torch.nn.utils.clip_grad_norm_ in f32: coef = max_norm / (norm +
    // 1e-6), computed as torch does (reciprocal, then times max_norm),
    // applied when below 1.
    const float coef = (1.0f / (r.grad_norm + 1e-6f)) * max_norm;
    if (coef < 1.0f) {
      ParallelFor(
          grad.size(), [&](size_t b, size_t e) { ScaleInPlace(grad.subspan(b, e - b), coef); },
          reducer_.options().parallel_min_elements);
      r.clipped_norm = r.grad_norm * coef;
    }
  }
  MutexLock lock(&mu_);
  before_write();
  optimizer_->Step(params_.span(), grad, r.lr, reducer_.options().parallel_min_elements,
                   stepped.empty() ? nullptr : &stepped);
  r.apply_time = absl::Now() - t1;
  return r;
}

std::vector<float> StepExecutor::Parameters() const {
  MutexLock lock(&mu_);
  return std::vector<float>(params_.data(), params_.data() + params_.size());
}

std::vector<std::pair<std::string, const FloatBuffer*>> StepExecutor::OptimizerState() const {
  std::vector<std::pair<std::string, const FloatBuffer*>> out;
  for (auto& [name, buffer] : optimizer_->StateBuffers()) out.emplace_back(name, buffer);
  return out;
}

}  // namespace gradacc
