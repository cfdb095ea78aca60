// Which training sample lands in which micro-batch of which window, on which
// worker. Deterministic and documented so another program (the PyTorch
// reference in tests/golden/gen_mlp_golden.py, say) can reproduce it:
//
//   N samples, seed S (the job's seed), M workers, K micro-batches per worker
//   per window, b samples per micro-batch; B = M*K*b samples per window,
//   W = ceil(N / B) windows per epoch (the last one may be smaller).
//
//   Epoch e's order: key = splitmix64(S ^ splitmix64(e + 1)); perm = 0..N-1;
//   for i = N-1 down to 1: j = splitmix64(key + i) mod (i + 1);
//   swap(perm[i], perm[j]).   (splitmix64 is the finaliser of job.proto;
//   all arithmetic mod 2^64.)
//
//   Window t (global, from 0) is window j = t mod W of epoch e = t div W; it
//   holds perm[j*B, j*B + R) with R = min(B, N - j*B). Its S' = M*K slots,
//   slot s = r*K + k for micro-batch k of worker r, split it evenly:
//   slot s gets perm[j*B + floor(s*R/S'), j*B + floor((s+1)*R/S')).
//
// So every arrangement of the same S' (1 worker x 8 micro-batches, 2 x 4,
// 4 x 2, 8 x 1) sees the same samples in every window.
//
// Elastic jobs (JobSpec.data_plan, common/data_plan.h) do not assume a fixed
// M: the server plans each window when it opens and hands the plan to its
// workers (JoinResponse.plan, ParametersHeader.plan): the members (sorted
// worker ids, fixed at the opening) and the epoch cursor (epoch e, offset o).
// The window holds perm_e[o, o + R) with R = min(|members|*K*b, N - o); the
// member at position r of the sorted list takes slots s = r*K + k of the
// S' = |members|*K slots, split evenly as above:
//   slot s gets perm_e[o + floor(s*R/S'), o + floor((s+1)*R/S')).
// The next window starts at o + R (epoch e + 1 at offset 0 once that is N).
// Consecutive windows tile the epoch, so every sample of an epoch is used
// exactly once however members come and go — unless a member is lost
// before it contributes, which the step ledger shows (StepRecord.plan
// against StepRecord.samples). The fixed formula is the special case
// o = j*B with M members every window.
#ifndef GRADACC_WORKER_TRAINING_DATA_ORDER_H_
#define GRADACC_WORKER_TRAINING_DATA_ORDER_H_

#include <cstdint>
#include <vector>

namespace gradacc {

std::vector<uint32_t> EpochPermutation(uint64_t seed, uint64_t epoch, uint32_t n);

struct WindowGeometry {
  uint64_t samples = 0;        // N
  uint32_t workers = 1;        // M
  uint32_t micro_batches = 1;  // K
  uint32_t micro_batch = 1;    // b

  uint64_t window_samples() const { return uint64_t{workers} * micro_batches * micro_batch; }
  uint64_t windows_per_epoch() const { return (samples + window_samples() - 1) / window_samples(); }
  // [begin, end) positions in the epoch's permutation for micro-batch k of
  // worker r in global window t.
  struct Range {
    uint64_t begin = 0, end = 0;
  };
  Range Slot(uint64_t t, uint32_t r, uint32_t k) const;
};

// Elastic jobs: micro-batch k of the member at position r of a window planned
// at `offset` with `samples` samples over `members` members of K micro-batches.
WindowGeometry::Range PlannedSlot(uint64_t offset, uint64_t samples, uint32_t members, uint32_t micro_batches,
                                  uint32_t r, uint32_t k);

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_DATA_ORDER_H_
