#include "worker/training/data_order.h"

#include <algorithm>
#include <numeric>

#include "common/job_spec.h"

namespace gradacc {

std::vector<uint32_t> EpochPermutation(uint64_t seed, uint64_t epoch, uint32_t n) {
  std::vector<uint32_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0u);
  const uint64_t key = SplitMix64(seed ^ SplitMix64(epoch + 1));
  for (uint64_t i = n; i-- > 1;) {
    const uint64_t j = SplitMix64(key + i) % (i + 1);
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

WindowGeometry::Range PlannedSlot(uint64_t offset, uint64_t samples, uint32_t members, uint32_t micro_batches,
                                  uint32_t r, uint32_t k) {
  const uint64_t slots = uint64_t{members} * micro_batches;
  const uint64_t s = uint64_t{r} * micro_batches + k;
  return {offset + s * samples / slots, offset + (s + 1) * samples / slots};
}

WindowGeometry::Range WindowGeometry::Slot(uint64_t t, uint32_t r, uint32_t k) const {
  const uint64_t w = windows_per_epoch();
  const uint64_t base = (t % w) * window_samples();
  const uint64_t size = std::min(window_samples(), samples - base);
  return PlannedSlot(base, size, workers, micro_batches, r, k);
}

}  // namespace gradacc
