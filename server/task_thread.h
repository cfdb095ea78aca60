// TaskThread: one thread running posted tasks in order. It is the trainer's
// thread: the only one that steps, checkpoints and builds snapshots, so
// those never race and need no lock between them.
//
// Thread-safe. Stop() wakes a task sleeping in Sleep() (a checkpoint retry)
// and makes later Sleeps return at once; tasks still run until destruction,
// which runs what was posted, then joins.
#ifndef GRADACC_SERVER_TASK_THREAD_H_
#define GRADACC_SERVER_TASK_THREAD_H_

#include <deque>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/mutex.h"

namespace gradacc {

class TaskThread {
 public:
  TaskThread();
  ~TaskThread();
  TaskThread(const TaskThread&) = delete;
  TaskThread& operator=(const TaskThread&) = delete;

  void Post(std::function<void()> task);
  // Runs `task` on the thread and waits for it, at most `timeout`. False
  // when it did not finish in time (it still runs later).
  bool Run(std::function<void()> task, absl::Duration timeout);
  // From a task: sleeps up to `d`; true when stopping (the task should give
  // up).
  bool Sleep(absl::Duration d);
  void Stop();
  bool stopping() const;

 private:
  void Loop();

  mutable Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool exit_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_TASK_THREAD_H_
