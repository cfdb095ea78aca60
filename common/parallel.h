// ParallelFor: splits [0, n) into one contiguous part per hardware thread
// (boundaries multiples of `align`: by default 16 elements, so parts never
// share a cache line of f32s) and runs fn(begin, end) on each, the last part on the caller's
// thread. Below `min_per_thread` elements per part it runs fn(0, n) inline.
//
// The split decides only who computes which elements, never how an element
// is computed, so element-wise kernels give the same bits for any thread
// count. The threads are a persistent pool that sleeps between calls; one
// call uses them at a time, and a call that finds them busy (another
// thread's, or one nested in a part) runs inline on its caller.
#ifndef GRADACC_COMMON_PARALLEL_H_
#define GRADACC_COMMON_PARALLEL_H_

#include <cstddef>
#include <vector>

#include "absl/functional/function_ref.h"

namespace gradacc {

// Threads ParallelFor uses at most (hardware threads; at least 1).
int ParallelThreads();

inline constexpr size_t kParallelMinElements = size_t{1} << 19;

// `align`: part boundaries are multiples of it (16 f32s = one cache line;
// 1 for counts of blocks).
// The part boundaries ParallelFor uses: parts + 1 increasing values from 0
// to n.
std::vector<size_t> ParallelBounds(size_t n, size_t min_per_thread = kParallelMinElements, size_t align = 16);

void ParallelFor(size_t n, absl::FunctionRef<void(size_t begin, size_t end)> fn,
                 size_t min_per_thread = kParallelMinElements, size_t align = 16);

}  // namespace gradacc

#endif  // GRADACC_COMMON_PARALLEL_H_
