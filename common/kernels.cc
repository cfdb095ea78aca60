#include "common/kernels.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "common/parallel.h"

namespace gradacc {
namespace {

static_assert(sizeof(float) == 4, "f32 required");

bool HostIsLittleEndian() {
  const uint32_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

uint32_t ByteSwap(uint32_t v) { return __builtin_bswap32(v); }

}  // namespace

void AddInto(absl::Span<float> dst, absl::Span<const float> src) {
  ParallelFor(dst.size(), [&](size_t b, size_t e) {
    float* __restrict d = dst.data();
    const float* __restrict s = src.data();
    for (size_t i = b; i < e; ++i) d[i] += s[i];
  });
}

void SumInOrder(absl::Span<float> dst, absl::Span<const float* const> srcs, float divisor,
                size_t min_per_thread) {
  // 16 Ki elements (64 KiB) per block: the partial sum stays in L2 while
  // every source adds into it. The first two sources are added in one loop
  // and the division folds into the last one (the same operations per
  // element as copy, add, add, ..., divide, so the same bits).
  constexpr size_t kBlock = 16 * 1024;
  const size_t m = srcs.size();
  ParallelFor(dst.size(), [&](size_t begin, size_t end) {
    for (size_t b = begin; b < end; b += kBlock) {
      const size_t n = std::min(kBlock, end - b);
      float* __restrict d = dst.data() + b;
      const float* __restrict s0 = srcs[0] + b;
      if (m == 1) {
        if (divisor != 0) {
          for (size_t i = 0; i < n; ++i) d[i] = s0[i] / divisor;
        } else {
          std::memcpy(d, s0, n * sizeof(float));
        }
        continue;
      }
      const float* __restrict s1 = srcs[1] + b;
      if (m == 2 && divisor != 0) {
        for (size_t i = 0; i < n; ++i) d[i] = (s0[i] + s1[i]) / divisor;
        continue;
      }
      for (size_t i = 0; i < n; ++i) d[i] = s0[i] + s1[i];
      for (size_t k = 2; k < m; ++k) {
        const float* __restrict s = srcs[k] + b;
        if (k + 1 == m && divisor != 0) {
          for (size_t i = 0; i < n; ++i) d[i] = (d[i] + s[i]) / divisor;
        } else {
          for (size_t i = 0; i < n; ++i) d[i] += s[i];
        }
      }
    }
  }, min_per_thread);
}

double SumOfSquaresParallel(absl::Span<const float> x, size_t block) {
  const size_t blocks = (x.size() + block - 1) / block;
  if (blocks <= 1) return SumOfSquares(x);
  std::vector<double> partial(blocks, 0.0);
  ParallelFor(
      blocks,
      [&](size_t begin, size_t end) {
        for (size_t b = begin; b < end; ++b) partial[b] = SumOfSquares(x.subspan(b * block, block));
      },
      /*min_per_thread=*/1, /*align=*/1);
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

void ScaleInPlace(absl::Span<float> dst, float s) {
  float* __restrict d = dst.data();
  for (size_t i = 0; i < dst.size(); ++i) d[i] *= s;
}

void DivideInPlace(absl::Span<float> dst, float q) {
  float* __restrict d = dst.data();
  for (size_t i = 0; i < dst.size(); ++i) d[i] /= q;
}

double SumOfSquares(absl::Span<const float> x) {
  // Four independent accumulators let the FPU overlap additions without
  // -ffast-math; the result is still deterministic for a given length.
  const float* const xs[1] = {x.data()};
  double out = 0;
  SumOfSquaresEach(xs, x.size(), &out);
  return out;
}

namespace {

// SumOfSquares of G arrays at once: the same four accumulators per array
// (element i goes to accumulator i % 4, in order), so the same bits.
template <int G>
void SumOfSquaresGroup(const float* const* xs, size_t n, double* out) {
  size_t i = 0;
#ifdef __SSE2__
  __m128d lo[G], hi[G];  // accumulators 0,1 and 2,3
  for (int j = 0; j < G; ++j) lo[j] = hi[j] = _mm_setzero_pd();
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < G; ++j) {
      const __m128 v = _mm_loadu_ps(xs[j] + i);
      const __m128d a = _mm_cvtps_pd(v), b = _mm_cvtps_pd(_mm_movehl_ps(v, v));
      lo[j] = _mm_add_pd(lo[j], _mm_mul_pd(a, a));
      hi[j] = _mm_add_pd(hi[j], _mm_mul_pd(b, b));
    }
  }
  double acc[G][4];
  for (int j = 0; j < G; ++j) {
    _mm_storeu_pd(acc[j], lo[j]);
    _mm_storeu_pd(acc[j] + 2, hi[j]);
  }
#else
  double acc[G][4] = {};
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < G; ++j) {
      for (int k = 0; k < 4; ++k) {
        const double v = xs[j][i + k];
        acc[j][k] += v * v;
      }
    }
  }
#endif
  for (int j = 0; j < G; ++j) {
    for (size_t t = i; t < n; ++t) acc[j][0] += double{xs[j][t]} * xs[j][t];
    out[j] = (acc[j][0] + acc[j][1]) + (acc[j][2] + acc[j][3]);
  }
}

}  // namespace

void SumOfSquaresEach(absl::Span<const float* const> xs, size_t n, double* out) {
  size_t j = 0;
  for (; j + 4 <= xs.size(); j += 4) SumOfSquaresGroup<4>(xs.data() + j, n, out + j);
  switch (xs.size() - j) {
    case 3:
      SumOfSquaresGroup<3>(xs.data() + j, n, out + j);
      break;
    case 2:
      SumOfSquaresGroup<2>(xs.data() + j, n, out + j);
      break;
    case 1:
      SumOfSquaresGroup<1>(xs.data() + j, n, out + j);
      break;
    default:
      break;
  }
}

float SumOfSquaresF32(absl::Span<const float> x) {
  // Small tensors: a sequential f32 sum, which is what torch 1.13's norm
  // computes for them (checked bit for bit by the golden clipping cases).
  // Large ones: a double sum rounded once, far more accurate than any f32
  // order and still deterministic.
  if (x.size() > kSequentialSumOfSquaresLimit) return static_cast<float>(SumOfSquares(x));
  float acc = 0;
  for (float v : x) acc = acc + v * v;
  return acc;
}

int64_t FirstNonFinite(absl::Span<const float> x) {
  // Branch-free scan first (NaN and Inf have an all-ones exponent); locate
  // only when something is wrong.
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(x.data());
  constexpr uint32_t kExponent = 0x7f800000u;
  bool any = false;
  size_t i = 0;
#ifdef __SSE2__
  // Eight values a step, OR-ed into one mask: no chain through a maximum.
  const __m128i exponent = _mm_set1_epi32(static_cast<int>(kExponent));
  __m128i bad = _mm_setzero_si128();
  for (; i + 8 <= x.size(); i += 8) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + i + 4));
    bad = _mm_or_si128(bad, _mm_or_si128(_mm_cmpeq_epi32(_mm_and_si128(a, exponent), exponent),
                                         _mm_cmpeq_epi32(_mm_and_si128(b, exponent), exponent)));
  }
  any = _mm_movemask_epi8(bad) != 0;
#endif
  for (; i < x.size(); ++i) any |= (bits[i] & kExponent) == kExponent;
  if (!any) return -1;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

int64_t FirstNonFiniteParallel(absl::Span<const float> x, size_t min_per_thread) {
  std::atomic<int64_t> first{INT64_MAX};
  ParallelFor(x.size(), [&](size_t b, size_t e) {
    const int64_t bad = FirstNonFinite(x.subspan(b, e - b));
    if (bad < 0) return;
    int64_t seen = first.load();
    const int64_t at = static_cast<int64_t>(b) + bad;
    while (at < seen && !first.compare_exchange_weak(seen, at)) {
    }
  }, min_per_thread);
  return first.load() == INT64_MAX ? -1 : first.load();
}

int64_t CopyFromLittleEndian(const char* bytes, absl::Span<float> dst) {
  std::memcpy(dst.data(), bytes, dst.size() * sizeof(float));
  if (!HostIsLittleEndian()) {
    uint32_t* w = reinterpret_cast<uint32_t*>(dst.data());
    for (size_t i = 0; i < dst.size(); ++i) w[i] = ByteSwap(w[i]);
  }
  return FirstNonFinite(dst);
}

void CopyToLittleEndian(absl::Span<const float> src, char* bytes) {
  std::memcpy(bytes, src.data(), src.size() * sizeof(float));
  if (!HostIsLittleEndian()) {
    uint32_t* w = reinterpret_cast<uint32_t*>(bytes);
    for (size_t i = 0; i < src.size(); ++i) w[i] = ByteSwap(w[i]);
  }
}

namespace {

uint16_t LoadLe16(const char* p) {
  return static_cast<uint16_t>(static_cast<unsigned char>(p[0]) | (static_cast<unsigned char>(p[1]) << 8));
}
void StoreLe16(char* p, uint16_t v) {
  p[0] = static_cast<char>(v & 0xff);
  p[1] = static_cast<char>(v >> 8);
}

}  // namespace

void EncodeBf16(absl::Span<const float> src, char* bytes) {
  for (size_t i = 0; i < src.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], 4);
    uint16_t b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
      b = static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN (quiet)
    } else {
      b = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1)) >> 16);  // nearest even
    }
    StoreLe16(bytes + 2 * i, b);
  }
}

int64_t DecodeBf16(const char* bytes, absl::Span<float> dst) {
  for (size_t i = 0; i < dst.size(); ++i) {
    const uint32_t u = uint32_t{LoadLe16(bytes + 2 * i)} << 16;
    std::memcpy(&dst[i], &u, 4);
  }
  return FirstNonFinite(dst);
}

// IEEE binary16 by hand (clang 14 has no _Float16 on x86): widening is
// exact; narrowing rounds to nearest even (F. Giesen's
// float_to_half_fast3_rtne), overflow to Inf, NaN to a quiet NaN.
namespace {

uint16_t FloatToHalf(float value) {
  uint32_t f;
  std::memcpy(&f, &value, 4);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= (127u + 16) << 23) {  // >= 65536: Inf, or NaN
    o = f > 0x7f800000u ? 0x7e00 : 0x7c00;
  } else if (f < 113u << 23) {  // a subnormal half, or zero
    const uint32_t magic_bits = ((127u - 15) + (23 - 10) + 1) << 23;
    float magic, x;
    std::memcpy(&magic, &magic_bits, 4);
    std::memcpy(&x, &f, 4);
    x += magic;
    uint32_t u;
    std::memcpy(&u, &x, 4);
    o = static_cast<uint16_t>(u - magic_bits);
  } else {
    const uint32_t mant_odd = (f >> 13) & 1;
    f += ((15u - 127) << 23) + 0xfff;
    f += mant_odd;
    o = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // * 2^-24, exact
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

}  // namespace

void EncodeF16(absl::Span<const float> src, char* bytes) {
  for (size_t i = 0; i < src.size(); ++i) StoreLe16(bytes + 2 * i, FloatToHalf(src[i]));
}

int64_t DecodeF16(const char* bytes, absl::Span<float> dst) {
  for (size_t i = 0; i < dst.size(); ++i) dst[i] = HalfToFloat(LoadLe16(bytes + 2 * i));
  return FirstNonFinite(dst);
}

}  // namespace gradacc
