// DeadlineQueue: runs callbacks at given times on one thread of its own,
// which sleeps until the earliest deadline (no polling tick). The trainer
// uses it for parked pulls' bounds, push streams' timeouts, QUORUM
// deadlines and checkpoint retries.
//
// Thread-safe. Callbacks run on the queue's thread without its lock held;
// they must not block for long. Cancel after the callback started returns
// false. The destructor stops the thread; callbacks not yet due never run.
#ifndef GRADACC_SERVER_DEADLINE_QUEUE_H_
#define GRADACC_SERVER_DEADLINE_QUEUE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/mutex.h"

namespace gradacc {

class DeadlineQueue {
 public:
  DeadlineQueue();
  ~DeadlineQueue();
  DeadlineQueue(const DeadlineQueue&) = delete;
  DeadlineQueue& operator=(const DeadlineQueue&) = delete;

  // Runs `fn` at `when` (at once if past). Returns an id for Cancel (never 0).
  uint64_t Schedule(absl::Time when, std::function<void()> fn);
  // True when `id` was pending and will not run.
  bool Cancel(uint64_t id);

 private:
  void Loop();

  Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // (deadline, id) -> callback; ordered by deadline.
  std::map<std::pair<absl::Time, uint64_t>, std::function<void()>> due_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, absl::Time> when_ ABSL_GUARDED_BY(mu_);
  absl::Time sleeping_until_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_DEADLINE_QUEUE_H_
