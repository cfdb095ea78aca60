#include "common/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace gradacc {
namespace {

// The persistent workers behind ParallelFor: ParallelThreads() - 1 threads
// that sleep on a condition variable between calls (no spinning: on two
// cores a spinning pool would steal the CPU gRPC needs). One call at a time
// uses them; a call that finds them busy (another thread's ParallelFor, or
// a ParallelFor nested inside a part) runs inline, which changes who
// computes, never what is computed.
class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this, i] { Loop(i); });
  }
  // Lives until exit: detached from static destruction order by leaking.
  static Pool& Get() {
    static Pool* pool = new Pool(ParallelThreads() - 1);
    return *pool;
  }

  // Runs fn on parts [bounds[i], bounds[i+1]); part `parts - 1` on the
  // caller. False (nothing run) when the pool is busy.
  bool TryRun(absl::FunctionRef<void(size_t, size_t)> fn, const std::vector<size_t>& bounds) {
    std::unique_lock<std::mutex> busy(busy_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    const size_t parts = bounds.size() - 1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      bounds_ = &bounds;
      pending_ = parts - 1;
      ++generation_;
    }
    wake_.notify_all();
    fn(bounds[parts - 1], bounds[parts]);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
    bounds_ = nullptr;
    return true;
  }

 private:
  void Loop(int index) {
    uint64_t seen = 0;
    while (true) {
      absl::FunctionRef<void(size_t, size_t)>* fn;
      size_t begin, end;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        // This call may use fewer parts than there are threads.
        // Woken after the call ended, or not needed by it.
        if (bounds_ == nullptr || static_cast<size_t>(index) + 2 >= bounds_->size()) continue;
        fn = fn_;
        begin = (*bounds_)[index];
        end = (*bounds_)[index + 1];
      }
      (*fn)(begin, end);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_mu_;  // held for a whole call
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;                                // guarded by mu_
  absl::FunctionRef<void(size_t, size_t)>* fn_ = nullptr;  // guarded by mu_
  const std::vector<size_t>* bounds_ = nullptr;            // guarded by mu_
  size_t pending_ = 0;                                     // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace

int ParallelThreads() {
  static const int threads = std::max(1u, std::thread::hardware_concurrency());
  return threads;
}

std::vector<size_t> ParallelBounds(size_t n, size_t min_per_thread, size_t align) {
  const size_t parts =
      std::min<size_t>(ParallelThreads(), std::max<size_t>(1, n / std::max<size_t>(1, min_per_thread)));
  std::vector<size_t> bounds(parts + 1);
  for (size_t i = 0; i < parts; ++i) bounds[i] = (n * i / parts) / align * align;
  bounds[parts] = n;
  return bounds;
}

void ParallelFor(size_t n, absl::FunctionRef<void(size_t, size_t)> fn, size_t min_per_thread, size_t align) {
  const std::vector<size_t> bounds = ParallelBounds(n, min_per_thread, align);
  if (bounds.size() <= 2 || !Pool::Get().TryRun(fn, bounds)) fn(0, n);
}

}  // namespace gradacc
