// Small helpers shared by the benchmark programs of tests/bench: a monotonic
// clock, medians, buffers allocated once (2 MiB aligned, advised as huge
// pages, touched before use) and the one result-line format that
// tests/bench/run.sh collects:
//
//   RESULT <section>,<name>,<P>,<M>,<setting>,<metric>,<value>,<unit>
//
// Header-only; nothing here is thread-safe unless said so.
#ifndef GRADACC_TESTS_BENCH_BENCH_UTIL_H_
#define GRADACC_TESTS_BENCH_BENCH_UTIL_H_

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace gradacc {
namespace bench {

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Marks the timed windows' wall-clock bounds for tests/bench/multihost.sh,
// which reads the links' byte counters between them: appends
// "<what> <unix seconds>" to `path` (nothing when it is empty).
inline void MarkPhase(const std::string& path, const char* what) {
  if (path.empty()) return;
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  if (FILE* f = std::fopen(path.c_str(), "a")) {
    std::fprintf(f, "%s %.6f\n", what, now);
    std::fclose(f);
  }
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

inline double Min(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }
inline double Max(const std::vector<double>& v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }

// `bytes` of memory, 2 MiB aligned, advised as huge pages and touched once,
// so that no timed loop pays for first-touch page faults. Owns the memory.
class Bytes {
 public:
  explicit Bytes(size_t bytes) : size_(bytes) {
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    if (posix_memalign(&data_, kHuge, rounded) != 0) throw std::bad_alloc();
    madvise(data_, rounded, MADV_HUGEPAGE);
    std::memset(data_, 1, rounded);
  }
  ~Bytes() { std::free(data_); }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  char* data() { return static_cast<char*>(data_); }
  size_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

// A deterministic, cheap gradient pattern (period 1024) that depends on the
// rank and the window, so no two windows push the same bytes.
inline void FillGradient(float* g, size_t n, int rank, uint64_t window) {
  float pattern[1024];
  for (int i = 0; i < 1024; ++i) {
    pattern[i] = static_cast<float>(((i * 7 + rank * 5 + static_cast<int>(window % 1000) * 3) % 9) - 4) * 1e-3f;
  }
  for (size_t off = 0; off < n; off += 1024) {
    std::memcpy(g + off, pattern, std::min<size_t>(1024, n - off) * sizeof(float));
  }
}

inline void PrintResult(const std::string& section, const std::string& name, uint64_t p, int m,
                        const std::string& setting, const std::string& metric, double value,
                        const std::string& unit) {
  std::printf("RESULT %s,%s,%llu,%d,%s,%s,%.6g,%s\n", section.c_str(), name.c_str(),
              static_cast<unsigned long long>(p), m, setting.c_str(), metric.c_str(), value, unit.c_str());
  std::fflush(stdout);
}

// Median, min and max of a series of times in seconds, as milliseconds.
inline void PrintTimes(const std::string& section, const std::string& name, uint64_t p, int m,
                       const std::string& setting, const std::string& metric, const std::vector<double>& seconds) {
  PrintResult(section, name, p, m, setting, metric + "_median", Median(seconds) * 1e3, "ms");
  PrintResult(section, name, p, m, setting, metric + "_min", Min(seconds) * 1e3, "ms");
  PrintResult(section, name, p, m, setting, metric + "_max", Max(seconds) * 1e3, "ms");
}

}  // namespace bench
}  // namespace gradacc

#endif  // GRADACC_TESTS_BENCH_BENCH_UTIL_H_
