#include "server/task_thread.h"

#include <memory>

namespace gradacc {

TaskThread::TaskThread() : thread_([this] { Loop(); }) {}

TaskThread::~TaskThread() {
  {
    MutexLock lock(&mu_);
    stopping_ = true;
    exit_ = true;
  }
  thread_.join();
}

void TaskThread::Post(std::function<void()> task) {
  MutexLock lock(&mu_);
  tasks_.push_back(std::move(task));
}

bool TaskThread::Run(std::function<void()> task, absl::Duration timeout) {
  auto done = std::make_shared<bool>(false);
  auto done_mu = std::make_shared<Mutex>();
  Post([task = std::move(task), done, done_mu] {
    task();
    MutexLock lock(done_mu.get());
    *done = true;
  });
  MutexLock lock(done_mu.get());
  return done_mu->AwaitWithTimeout(Condition(done.get()), timeout);
}

bool TaskThread::Sleep(absl::Duration d) {
  MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(Condition(&stopping_), d);
  return stopping_;
}

void TaskThread::Stop() {
  MutexLock lock(&mu_);
  stopping_ = true;
}

bool TaskThread::stopping() const {
  MutexLock lock(&mu_);
  return stopping_;
}

void TaskThread::Loop() {
  while (true) {
    std::function<void()> task;
    {
      MutexLock lock(&mu_);
      mu_.Await(Condition(
          +[](TaskThread* t) ABSL_NO_THREAD_SAFETY_ANALYSIS { return !t->tasks_.empty() || t->exit_; }, this));
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace gradacc
