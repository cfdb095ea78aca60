#include "common/parallel.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace gradacc {

int ParallelThreads() {
  static const int threads = std::max(1u, std::thread::hardware_concurrency());
  return threads;
}

void ParallelFor(size_t n, absl::FunctionRef<void(size_t, size_t)> fn, size_t min_per_thread, size_t align) {
  const size_t parts = std::min<size_t>(ParallelThreads(), std::max<size_t>(1, n / std::max<size_t>(1, min_per_thread)));
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  auto bound = [&](size_t i) { return i == parts ? n : (n * i / parts) / align * align; };
  std::vector<std::thread> threads;
  threads.reserve(parts - 1);
  for (size_t i = 0; i + 1 < parts; ++i) {
    threads.emplace_back([&fn, b = bound(i), e = bound(i + 1)] { fn(b, e); });
  }
  fn(bound(parts - 1), n);
  for (std::thread& t : threads) t.join();
}

}  // namespace gradacc
