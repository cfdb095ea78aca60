// Element-wise f32 kernels used by the accumulator and the optimizers.
// Pure functions over caller-owned memory; thread-safe.
#ifndef GRADACC_COMMON_KERNELS_H_
#define GRADACC_COMMON_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "common/parallel.h"

namespace gradacc {

// dst[i] += src[i] (on ParallelFor's threads).
void AddInto(absl::Span<float> dst, absl::Span<const float> src);
// The deterministic reduction: dst[i] = (((src[0][i] + src[1][i]) +
// src[2][i]) + ...), then divided by `divisor` when it is non-zero: the same
// bits as copying src[0] and AddInto-ing the others in order, then
// DivideInPlace. Cache-blocked (each source is read once, dst written once)
// and spread over ParallelFor's threads. srcs must not be empty.
// `min_per_thread`: ParallelFor's threshold (tests lower it to reach the
// multi-threaded path with small models).
void SumInOrder(absl::Span<float> dst, absl::Span<const float* const> srcs, float divisor,
                size_t min_per_thread = kParallelMinElements);
// SumOfSquares over fixed blocks of kSumBlock elements computed in parallel
// and added in block order: deterministic whatever the thread count.
inline constexpr size_t kSumBlock = size_t{1} << 20;
double SumOfSquaresParallel(absl::Span<const float> x, size_t block = kSumBlock);
// dst[i] *= s.
void ScaleInPlace(absl::Span<float> dst, float s);
// dst[i] /= d (a true division, as torch's `tensor / n`).
void DivideInPlace(absl::Span<float> dst, float d);
// Sum of squares, accumulated in double.
double SumOfSquares(absl::Span<const float> x);
// out[j] = SumOfSquares(xs[j], n elements), bit for bit, in one pass: each
// sum is a chain of dependent additions, so several arrays' chains side by
// side keep the FPU busy where one array's wait on their latency.
void SumOfSquaresEach(absl::Span<const float* const> xs, size_t n, double* out);
// Sum of squares as global-norm clipping uses it: a sequential f32 sum (as
// torch.norm computes it for small tensors) up to this many elements, the
// double sum rounded to f32 above.
inline constexpr size_t kSequentialSumOfSquaresLimit = 4096;
float SumOfSquaresF32(absl::Span<const float> x);
// Index of the first NaN or Inf in x, or -1 when all are finite.
int64_t FirstNonFinite(absl::Span<const float> x);
// The same, scanning on ParallelFor's threads.
int64_t FirstNonFiniteParallel(absl::Span<const float> x, size_t min_per_thread = kParallelMinElements);
// Copies little-endian f32 bytes into dst (dst.size() * 4 bytes) and returns
// the index of the first non-finite value copied, or -1.
int64_t CopyFromLittleEndian(const char* bytes, absl::Span<float> dst);
// Writes src as little-endian f32 bytes.
void CopyToLittleEndian(absl::Span<const float> src, char* bytes);
// Compressed gradients on the wire: 2 bytes an element, little-endian,
// rounded to nearest even. Decoding widens exactly and returns the index of
// the first non-finite value, or -1.
void EncodeBf16(absl::Span<const float> src, char* bytes);
int64_t DecodeBf16(const char* bytes, absl::Span<float> dst);
void EncodeF16(absl::Span<const float> src, char* bytes);
int64_t DecodeF16(const char* bytes, absl::Span<float> dst);

}  // namespace gradacc

#endif  // GRADACC_COMMON_KERNELS_H_
