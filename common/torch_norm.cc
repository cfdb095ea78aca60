#include "common/torch_norm.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

// This file is compiled with -ffp-contract=off (common/CMakeLists.txt): the
// tail's rounded products must not be fused into the additions; the fused
// multiply-adds are written out.

namespace gradacc {
namespace {

__attribute__((target("avx2,fma"))) void LanesAvx2(float* lanes, const float* x, uint64_t blocks) {
  __m256 acc = _mm256_loadu_ps(lanes);
  for (uint64_t b = 0; b < blocks; ++b) {
    const __m256 v = _mm256_loadu_ps(x + 8 * b);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  _mm256_storeu_ps(lanes, acc);
}

void LanesPortable(float* lanes, const float* x, uint64_t blocks) {
  for (uint64_t b = 0; b < blocks; ++b) {
    for (int j = 0; j < 8; ++j) lanes[j] = std::fmaf(x[8 * b + j], x[8 * b + j], lanes[j]);
  }
}

bool HaveFma() {
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return have;
}

}  // namespace

void TorchNormAccumulate(TorchNormState& state, absl::Span<const float> part, uint64_t offset,
                         uint64_t tensor_size) {
  const uint64_t full = tensor_size - tensor_size % 8;
  uint64_t i = offset;
  const uint64_t end = offset + part.size();
  const float* x = part.data() - offset;  // x[i] is element i of the tensor
  // Up to a lane-0 boundary one by one, then whole blocks, then the rest.
  for (; i < end && i < full && i % 8 != 0; ++i) state.lanes[i % 8] = std::fmaf(x[i], x[i], state.lanes[i % 8]);
  const uint64_t block_end = std::min(end, full) / 8 * 8;
  if (i < block_end) {
    const uint64_t blocks = (block_end - i) / 8;
    if (HaveFma()) {
      LanesAvx2(state.lanes, x + i, blocks);
    } else {
      LanesPortable(state.lanes, x + i, blocks);
    }
    i = block_end;
  }
  for (; i < end && i < full; ++i) state.lanes[i % 8] = std::fmaf(x[i], x[i], state.lanes[i % 8]);
  for (; i < end; ++i) state.tail[state.tail_count++] = x[i];
}

float TorchNormFinish(const TorchNormState& state) {
  float sum = state.lanes[0];
  for (int j = 1; j < 8; ++j) sum = sum + state.lanes[j];
  uint32_t k = 0;
  for (; k + 4 <= state.tail_count; k += 4) {
    for (uint32_t j = k; j < k + 4; ++j) {
      const float square = state.tail[j] * state.tail[j];
      sum = sum + square;
    }
  }
  for (; k < state.tail_count; ++k) sum = std::fmaf(state.tail[k], state.tail[k], sum);
  return sum;
}

float TorchSumOfSquares(absl::Span<const float> x) {
  TorchNormState state;
  TorchNormAccumulate(state, x, 0, x.size());
  return TorchNormFinish(state);
}

float TorchTotalNorm(absl::Span<const float> tensor_sums_of_squares) {
  std::vector<float> norms;
  norms.reserve(tensor_sums_of_squares.size());
  for (float s : tensor_sums_of_squares) norms.push_back(std::sqrt(s));
  return std::sqrt(TorchSumOfSquares(norms));
}

}  // namespace gradacc
