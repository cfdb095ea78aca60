#include "server/deadline_queue.h"

#include <vector>

namespace gradacc {

DeadlineQueue::DeadlineQueue() : thread_([this] { Loop(); }) {}

DeadlineQueue::~DeadlineQueue() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

uint64_t DeadlineQueue::Schedule(absl::Time when, std::function<void()> fn) {
  MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  due_.emplace(std::make_pair(when, id), std::move(fn));
  when_[id] = when;
  return id;
}

bool DeadlineQueue::Cancel(uint64_t id) {
  MutexLock lock(&mu_);
  auto it = when_.find(id);
  if (it == when_.end()) return false;
  due_.erase(std::make_pair(it->second, id));
  when_.erase(it);
  return true;
}

void DeadlineQueue::Loop() {
  MutexLock lock(&mu_);
  while (!stop_) {
    // Sleep until the earliest deadline, a new earlier one, or stop. The
    // condition is re-evaluated whenever the mutex is released.
    sleeping_until_ = due_.empty() ? absl::InfiniteFuture() : due_.begin()->first.first;
    mu_.AwaitWithDeadline(Condition(
                              +[](DeadlineQueue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                return q->stop_ || (!q->due_.empty() && q->due_.begin()->first.first < q->sleeping_until_);
                              },
                              this),
                          sleeping_until_);
    if (stop_) return;
    std::vector<std::function<void()>> ready;
    const absl::Time now = absl::Now();
    while (!due_.empty() && due_.begin()->first.first <= now) {
      when_.erase(due_.begin()->first.second);
      ready.push_back(std::move(due_.begin()->second));
      due_.erase(due_.begin());
    }
    if (ready.empty()) continue;
    mu_.Unlock();
    for (auto& fn : ready) fn();
    mu_.Lock();
  }
}

}  // namespace gradacc
