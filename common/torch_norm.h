// The 2-norm exactly as PyTorch 1.13 computes it on x86-64 CPUs with AVX2
// (`torch.norm(t)`, `torch.linalg.vector_norm(t)`, and so
// `torch.nn.utils.clip_grad_norm_`), bit for bit, for any tensor size.
//
// torch's vectorised reduction (aten norm kernel, 8 f32 lanes): lane
// j = i mod 8 accumulates x[i]*x[i] with a fused multiply-add over the
// first n - n%8 elements, in index order; the lanes are then added in order
// (((l0 + l1) + l2) + ...); the last n%8 elements follow, groups of four as
// rounded products added one by one, the rest as fused multiply-adds; the
// norm is the f32 square root. (Found by matching torch on random tensors
// of 1 to 4M elements: equal in every trial; tests/common/common_test.cc holds the
// kernel to values produced by torch.) On CPUs where torch dispatches to
// AVX-512 (16 lanes) or has no FMA, torch's own results differ from these
// by rounding; README.md ("What it guarantees") states the bound.
//
// A tensor split over several servers (shards) is reduced part by part in
// index order through TorchNormState, with the same bits as one pass.
// Pure functions over caller-owned memory; thread-safe.
#ifndef GRADACC_COMMON_TORCH_NORM_H_
#define GRADACC_COMMON_TORCH_NORM_H_

#include <cstdint>

#include "absl/types/span.h"

namespace gradacc {

// The reduction of a prefix of one tensor: its lanes, and the elements of
// the tail (the last n%8) seen so far, which are added after the lanes.
struct TorchNormState {
  float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  uint32_t tail_count = 0;
};

// Continues `state` with elements [offset, offset + part.size()) of a tensor
// of `tensor_size` elements; parts must come in index order, without gaps.
void TorchNormAccumulate(TorchNormState& state, absl::Span<const float> part, uint64_t offset,
                         uint64_t tensor_size);
// The sum of squares once every element was accumulated (its f32 square
// root is torch's norm).
float TorchNormFinish(const TorchNormState& state);

// The sum of squares of a whole tensor: the two calls above in one.
float TorchSumOfSquares(absl::Span<const float> x);

// clip_grad_norm_'s total norm: the norm of the stacked per-tensor norms,
// given each tensor's sum of squares (torch.norm(torch.stack([torch.norm(g)
// for g in grads]))).
float TorchTotalNorm(absl::Span<const float> tensor_sums_of_squares);

}  // namespace gradacc

#endif  // GRADACC_COMMON_TORCH_NORM_H_
