#include "server/reducer.h"

#include <algorithm>
#include <cmath>

#include "common/kernels.h"

namespace gradacc {

Reducer::Reducer(const ModelLayout* layout, FlatRange range, ReducerOptions options)
    : layout_(layout), range_(range), options_(options) {
  const uint64_t piece = std::max<size_t>(1, options_.piece_elements);
  for (size_t i = 0; i < layout_->tensors().size(); ++i) {
    const FlatRange part = PartOf(layout_->tensors()[i], range_.begin, range_.end);
    for (uint64_t b = part.begin; b < part.end; b += piece) {
      pieces_.push_back({b - range_.begin, std::min(part.end, b + piece) - range_.begin, static_cast<uint32_t>(i)});
    }
  }
}

void Reducer::Sum(absl::Span<float> acc, absl::Span<const float* const> sources, float divisor) const {
  SumInOrder(acc, sources, divisor, options_.parallel_min_elements);
}

bool Reducer::StartsMidTensor() const {
  for (const ModelLayout::Tensor& t : layout_->tensors()) {
    if (t.offset < range_.begin && t.offset + t.size > range_.begin) return true;
  }
  return false;
}

NormPart Reducer::TensorNorms(absl::Span<const float> acc, const TorchNormState* carry_in) const {
  const auto& tensors = layout_->tensors();
  NormPart out;
  out.finished.assign(tensors.size(), 0.0f);
  std::vector<TorchNormState> states(tensors.size());
  std::vector<uint32_t> mine;
  for (uint32_t i = 0; i < tensors.size(); ++i) {
    if (!PartOf(tensors[i], range_.begin, range_.end).empty()) mine.push_back(i);
  }
  // Tensors are independent: spread them over the threads; each tensor's
  // own reduction is sequential, as torch's is.
  ParallelFor(
      mine.size(),
      [&](size_t first, size_t last) {
        for (size_t k = first; k < last; ++k) {
          const uint32_t i = mine[k];
          const ModelLayout::Tensor& t = tensors[i];
          const FlatRange part = PartOf(t, range_.begin, range_.end);
          if (t.offset < range_.begin && carry_in != nullptr) states[i] = *carry_in;
          TorchNormAccumulate(states[i], acc.subspan(part.begin - range_.begin, part.size()),
                              part.begin - t.offset, t.size);
          if (part.end == t.offset + t.size) out.finished[i] = TorchNormFinish(states[i]);
        }
      },
      /*min_per_thread=*/1, /*align=*/1);
  if (!mine.empty()) {
    const uint32_t last = mine.back();
    const ModelLayout::Tensor& t = tensors[last];
    if (t.offset + t.size > range_.end) {
      out.carry_tensor = last;
      out.carry = states[last];
    }
  }
  return out;
}

double Reducer::SourceSquares(const float* source) const {
  return SumOfSquaresParallel(absl::MakeConstSpan(source, range_.size()));
}

Reducer::FusedSums Reducer::Fused(absl::Span<const float* const> sources, float divisor,
                                  const Optimizer::Piece& step) const {
  const size_t m = sources.size();
  std::vector<double> partial(pieces_.size(), 0.0);
  std::vector<double> source_partial(pieces_.size() * m, 0.0);
  const size_t piece = std::max<size_t>(1, options_.piece_elements);
  ParallelFor(
      pieces_.size(),
      [&](size_t first, size_t last) {
        std::vector<float> g(piece);
        std::vector<const float*> at(m + 1);  // the sources, then their sum
        std::vector<double> squares(m + 1);
        at[m] = g.data();
        for (size_t i = first; i < last; ++i) {
          const Piece& p = pieces_[i];
          const size_t n = p.end - p.begin;
          for (size_t k = 0; k < m; ++k) at[k] = sources[k] + p.begin;
          SumInOrder(absl::MakeSpan(g.data(), n), absl::MakeConstSpan(at.data(), m), divisor,
                     /*min_per_thread=*/~size_t{0});
          SumOfSquaresEach(at, n, squares.data());
          for (size_t k = 0; k < m; ++k) source_partial[i * m + k] = squares[k];
          partial[i] = squares[m];
          step(p.begin, p.end, g.data());
        }
      },
      /*min_per_thread=*/std::max<size_t>(1, options_.parallel_min_elements / piece), /*align=*/1);
  // Per tensor (and per source), the pieces' sums in order: deterministic
  // for any thread count.
  FusedSums sums;
  sums.tensors.assign(layout_->tensors().size(), 0.0);
  sums.sources.assign(m, 0.0);
  for (size_t i = 0; i < pieces_.size(); ++i) {
    sums.tensors[pieces_[i].tensor] += partial[i];
    for (size_t k = 0; k < m; ++k) sums.sources[k] += source_partial[i * m + k];
  }
  return sums;
}

}  // namespace gradacc
