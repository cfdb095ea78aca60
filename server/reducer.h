// Reducer: the deterministic arithmetic of closing a window over the flat
// range this server owns — the sum of the contributions in worker order,
// the torch-exact per-tensor norms global-norm clipping needs, each
// contribution's own norm for the ledger, and the fused pass that reduces,
// measures and steps one cache-sized piece at a time.
//
// Whatever the thread count, piece size or arrival order, the same inputs
// give the same bits. Immutable after construction; thread-safe (callers
// own the buffers).
#ifndef GRADACC_SERVER_REDUCER_H_
#define GRADACC_SERVER_REDUCER_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/types/span.h"
#include "common/job_spec.h"
#include "common/parallel.h"
#include "common/torch_norm.h"
#include "server/optimizer.h"

namespace gradacc {

struct ReducerOptions {
  // Elements per piece of the fused pass (at most; pieces never cross a
  // tensor).
  size_t piece_elements = 16 * 1024;
  // ParallelFor's threshold: below this many elements per thread, one
  // thread. Tests lower both to reach the multi-threaded paths with small
  // models.
  size_t parallel_min_elements = kParallelMinElements;
};

// This server's part of one window's gradient norm: per model tensor, the
// sum of squares of the tensors whose last element it holds (0 elsewhere),
// and the reduction state of a tensor that continues on the next shard.
struct NormPart {
  std::vector<float> finished;
  std::optional<uint32_t> carry_tensor;
  TorchNormState carry;
  // Loss scaling: this part of the unscaled gradient has a NaN or Inf.
  bool found_inf = false;
};

// What the shards agree on: each tensor's finished sum of squares and
// whether any shard found a non-finite element (loss scaling).
struct NormTotals {
  std::vector<float> sums;
  bool found_inf = false;
};

class Reducer {
 public:
  Reducer(const ModelLayout* layout, FlatRange range, ReducerOptions options);

  // acc = (((s0 + s1) + s2) + ...) / divisor (no division when 0).
  void Sum(absl::Span<float> acc, absl::Span<const float* const> sources, float divisor) const;
  // torch's sum of squares of each tensor's part in `acc`; the first tensor
  // continues `carry_in` when it began on the previous shard.
  NormPart TensorNorms(absl::Span<const float> acc, const TorchNormState* carry_in) const;
  // Whether this range begins inside a tensor that began before it.
  bool StartsMidTensor() const;
  // A source's sum of squares (the ledger's norm), accumulated in double.
  double SourceSquares(const float* source) const;

  struct FusedSums {
    std::vector<double> tensors;  // per model tensor: sum of squares of the reduced gradient
    std::vector<double> sources;  // per source: sum of squares
  };
  // The fused close: per piece, reduce into a cache-resident buffer, add its
  // squares, and hand it to `step` (Optimizer::Prepare's piece).
  FusedSums Fused(absl::Span<const float* const> sources, float divisor, const Optimizer::Piece& step) const;

  const ReducerOptions& options() const { return options_; }

 private:
  struct Piece {
    uint64_t begin, end;  // local to the range
    uint32_t tensor;
  };

  const ModelLayout* const layout_;
  const FlatRange range_;
  const ReducerOptions options_;
  std::vector<Piece> pieces_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_REDUCER_H_
