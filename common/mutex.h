// gradacc::Mutex, MutexLock and Condition: what every class of this project
// locks with.
//
// In normal builds they are absl::Mutex, absl::MutexLock and absl::Condition.
// Debian's Abseil is not built with ThreadSanitizer, so TSan cannot see
// absl::Mutex's happens-before edges and reports false races on every field
// it guards; a TSan build of gradacc therefore uses std_sync::Mutex below,
// the same interface (the subset this project uses) over std::mutex and
// std::condition_variable, which TSan sees. It carries Abseil's thread-safety
// annotations, so clang's -Wthread-safety checks code against either.
//
// std_sync is compiled in every build (tests/common/mutex_test.cc holds both
// implementations to the same tests); only the aliases at the bottom change.
//
// Differences from absl::Mutex, none of which a correct caller can observe:
// readers are serialised (ReaderLock is an exclusive lock); a Condition is
// evaluated on the waiting thread only, after every release of the mutex
// while someone waits; AssertHeld checks that the *calling* thread holds it.
#ifndef GRADACC_COMMON_MUTEX_H_
#define GRADACC_COMMON_MUTEX_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

// GRADACC_TSAN: defined by CMake in TSan builds (GRADACC_SANITIZE=thread),
// which also undefine __SANITIZE_THREAD__ (see CMakeLists.txt); detected
// here for builds made otherwise.
#ifndef GRADACC_TSAN
#if defined(__SANITIZE_THREAD__)
#define GRADACC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GRADACC_TSAN 1
#endif
#endif
#endif

namespace gradacc {
namespace std_sync {

// A predicate for Mutex::Await and friends, constructed as absl::Condition
// is. Like absl::Condition it does not own what it points to, and it must be
// a pure function of state guarded by the mutex it is used with.
class Condition {
 public:
  // True when *cond is.
  explicit Condition(const bool* cond) : eval_([cond] { return *cond; }) {}
  // func(arg); func is typically a captureless lambda, `+[](T* t) {...}`.
  template <typename T>
  Condition(bool (*func)(T*), std::common_type_t<T>* arg) : eval_([func, arg] { return func(arg); }) {}
  // (object->*method)().
  template <typename T>
  Condition(T* object, bool (std::common_type_t<T>::*method)())
      : eval_([object, method] { return (object->*method)(); }) {}
  template <typename T>
  Condition(const T* object, bool (std::common_type_t<T>::*method)() const)
      : eval_([object, method] { return (object->*method)(); }) {}
  // (*functor)(), e.g. a lambda that outlives the wait.
  template <typename T, typename = decltype(static_cast<bool>(std::declval<const T&>()()))>
  explicit Condition(const T* functor) : eval_([functor] { return (*functor)(); }) {}

  // Always true.
  static const Condition kTrue;

  bool Eval() const { return !eval_ || eval_(); }

 private:
  Condition() = default;
  std::function<bool()> eval_;  // empty: kTrue
};

inline const Condition Condition::kTrue;

// A mutual-exclusion lock with absl::Mutex's interface: Lock / Unlock,
// Await on a Condition (re-evaluated whenever the mutex is released, no
// separate signalling), the timed and LockWhen variants. Thread-safe; not
// copyable or movable.
class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  // The lock and unlock functions are where the annotations' claims become
  // true, over an unannotated std::mutex: the analysis cannot follow them.
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    mu_.lock();
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    CheckHeld("Unlock");
    // Under the lock, so that a waiter that wakes and destroys the object
    // holding this mutex cannot do so before the notification is done.
    if (waiters_ > 0) cv_.notify_all();
    owner_.store(std::thread::id(), std::memory_order_relaxed);
    mu_.unlock();
  }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (!mu_.try_lock()) return false;
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    return true;
  }

  // Shared mode is exclusive here: correct for every caller, only slower.
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS { Lock(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS { Unlock(); }
  void WriterLock() ABSL_EXCLUSIVE_LOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS { Lock(); }
  void WriterUnlock() ABSL_UNLOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS { Unlock(); }

  // Abort unless the calling thread holds the mutex.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() { CheckHeld("AssertHeld"); }
  void AssertReaderHeld() const ABSL_ASSERT_SHARED_LOCK() { CheckHeld("AssertReaderHeld"); }
  // Abort if the calling thread holds the mutex.
  void AssertNotHeld() const {
    if (owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
      Die("AssertNotHeld: the calling thread holds the mutex");
    }
  }

  // With the mutex held: release it until cond is true, then return with it
  // held again.
  void Await(const Condition& cond) ABSL_SHARED_LOCKS_REQUIRED(this) { Wait(cond, nullptr, true); }
  // As Await, giving up after `timeout` (with the mutex held again); returns
  // cond's value at return.
  bool AwaitWithTimeout(const Condition& cond, absl::Duration timeout) ABSL_SHARED_LOCKS_REQUIRED(this) {
    if (timeout == absl::InfiniteDuration()) return Wait(cond, nullptr, true);
    const auto deadline = DeadlineAfter(timeout);
    return Wait(cond, &deadline, true);
  }
  bool AwaitWithDeadline(const Condition& cond, absl::Time deadline) ABSL_SHARED_LOCKS_REQUIRED(this) {
    return AwaitWithTimeout(cond, DurationUntil(deadline));
  }

  // Lock once cond is true.
  void LockWhen(const Condition& cond) ABSL_EXCLUSIVE_LOCK_FUNCTION() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    Lock();
    Wait(cond, nullptr, false);
  }
  // Lock, waiting at most `timeout` for cond; holds the mutex on return
  // either way and returns cond's value.
  bool LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) ABSL_EXCLUSIVE_LOCK_FUNCTION()
      ABSL_NO_THREAD_SAFETY_ANALYSIS {
    // The clock starts before the wait for the lock itself, as in Abseil.
    const bool infinite = timeout == absl::InfiniteDuration();
    const auto deadline = infinite ? std::chrono::steady_clock::time_point() : DeadlineAfter(timeout);
    Lock();
    return Wait(cond, infinite ? nullptr : &deadline, false);
  }
  bool LockWhenWithDeadline(const Condition& cond, absl::Time deadline) ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    return LockWhenWithTimeout(cond, DurationUntil(deadline));
  }

 private:
  using Clock = std::chrono::steady_clock;

  static Clock::time_point DeadlineAfter(absl::Duration timeout) {
    // Longer than any test or job; keeps the chrono arithmetic from overflowing.
    const absl::Duration capped = std::min(std::max(timeout, absl::ZeroDuration()), absl::Hours(24 * 365));
    return Clock::now() + absl::ToChronoNanoseconds(capped);
  }
  static absl::Duration DurationUntil(absl::Time deadline) {
    if (deadline == absl::InfiniteFuture()) return absl::InfiniteDuration();
    return deadline - absl::Now();
  }

  [[noreturn]] static void Die(const char* what) {
    std::fprintf(stderr, "gradacc::Mutex: %s\n", what);
    std::abort();
  }
  void CheckHeld(const char* what) const {
    if (owner_.load(std::memory_order_relaxed) != std::this_thread::get_id()) {
      std::fprintf(stderr, "gradacc::Mutex: %s without holding the mutex\n", what);
      std::abort();
    }
  }

  // With mu_ held: wait until cond (or the deadline, when given). `released`
  // says whether the caller may have changed guarded state since it locked:
  // then other waiters must re-evaluate theirs, as after an Unlock.
  bool Wait(const Condition& cond, const Clock::time_point* deadline, bool released) {
    CheckHeld("Await");
    if (cond.Eval()) return true;
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    if (released && waiters_ > 0) cv_.notify_all();
    ++waiters_;
    owner_.store(std::thread::id(), std::memory_order_relaxed);
    bool result = false;
    while (!(result = cond.Eval())) {
      if (deadline == nullptr) {
        cv_.wait(lock);
      } else if (cv_.wait_until(lock, *deadline) == std::cv_status::timeout) {
        result = cond.Eval();
        break;
      }
    }
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    --waiters_;
    lock.release();  // the caller keeps holding mu_
    return result;
  }

  std::mutex mu_;
  std::condition_variable cv_;  // notified on every release while waiters_ > 0
  int waiters_ = 0;             // threads inside Wait; changed only with mu_ held
  // Who holds mu_ (for the assertions); relaxed: only the holder writes it.
  std::atomic<std::thread::id> owner_{};
};

// Holds a Mutex for its scope, as absl::MutexLock (which takes a pointer).
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  // Locks once cond is true.
  MutexLock(Mutex* mu, const Condition& cond) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->LockWhen(cond); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }

 private:
  Mutex* const mu_;
};

}  // namespace std_sync

#ifdef GRADACC_TSAN
using Mutex = std_sync::Mutex;
using MutexLock = std_sync::MutexLock;
using Condition = std_sync::Condition;
#else
using Mutex = absl::Mutex;
using MutexLock = absl::MutexLock;
using Condition = absl::Condition;
#endif

// Turns off Abseil's lock-order (deadlock) detection in builds of gradacc
// with NDEBUG (Release, RelWithDebInfo); debug builds keep it. Debian builds
// Abseil without NDEBUG, so by default every absl::Mutex acquisition — gRPC's
// own mutexes too — is recorded in one process-wide graph under one global
// lock: ~11% of all CPU cycles of the busy servers and workers of the
// multihost benchmark went to GraphCycles::GetId alone (perf). An atomic
// switch, safe at any time; call it first thing in main() so that no lock
// pays for the graph.
inline void SkipMutexDeadlockDetectionInOptimizedBuilds() {
#ifdef NDEBUG
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
}

}  // namespace gradacc

#endif  // GRADACC_COMMON_MUTEX_H_
