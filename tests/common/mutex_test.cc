// gradacc::Mutex, MutexLock and Condition (common/mutex.h): the std::mutex
// implementation that TSan builds use and absl's, held to the same tests.
#include "common/mutex.h"

#include <cstdio>
#include <cstdlib>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

struct AbslSync {
  using Mutex = absl::Mutex;
  using MutexLock = absl::MutexLock;
  using Condition = absl::Condition;
};
struct StdSync {
  using Mutex = std_sync::Mutex;
  using MutexLock = std_sync::MutexLock;
  using Condition = std_sync::Condition;
};

// Long enough never to be reached unless the implementation is broken; the
// tests never depend on how long anything takes.
constexpr absl::Duration kBound = absl::Seconds(30);

// A thread that may be stuck in an untimed Await cannot be joined; when a
// bounded wait for it fails, the test binary stops rather than hangs.
[[noreturn]] void Stuck(const char* what) {
  std::fprintf(stderr, "mutex_test: %s: a thread is stuck, stopping\n", what);
  std::fflush(stderr);
  std::abort();
}

template <typename S>
class MutexTest : public ::testing::Test {};
#ifdef GRADACC_TSAN
// TSan cannot see Debian's (uninstrumented) absl::Mutex: only ours is tested.
using Implementations = ::testing::Types<StdSync>;
#else
using Implementations = ::testing::Types<AbslSync, StdSync>;
#endif
TYPED_TEST_SUITE(MutexTest, Implementations);

TEST(MutexAliasTest, TsanBuildsUseTheStdImplementation) {
#ifdef GRADACC_TSAN
  EXPECT_TRUE((std::is_same_v<gradacc::Mutex, std_sync::Mutex>));
  EXPECT_TRUE((std::is_same_v<gradacc::Condition, std_sync::Condition>));
#else
  EXPECT_TRUE((std::is_same_v<gradacc::Mutex, absl::Mutex>));
  EXPECT_TRUE((std::is_same_v<gradacc::MutexLock, absl::MutexLock>));
#endif
}

template <typename S>
struct Counter {
  typename S::Mutex mu;
  long value ABSL_GUARDED_BY(mu) = 0;
};

TYPED_TEST(MutexTest, MutexLockExcludes) {
  using S = TypeParam;
  Counter<S> c;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&c] {
      for (int i = 0; i < 20000; ++i) {
        typename S::MutexLock lock(&c.mu);
        ++c.value;
      }
    });
  }
  for (auto& t : threads) t.join();
  typename S::MutexLock lock(&c.mu);
  c.mu.AssertHeld();
  EXPECT_EQ(c.value, 80000);
}

TYPED_TEST(MutexTest, LockUnlockTryLock) {
  using S = TypeParam;
  Counter<S> c;
  c.mu.Lock();
  c.value = 1;
  bool other_got_it = true;
  std::thread other([&] {
    other_got_it = false;
    if (c.mu.TryLock()) {
      other_got_it = true;
      c.mu.Unlock();
    }
  });
  other.join();
  EXPECT_FALSE(other_got_it);
  c.mu.Unlock();
  if (c.mu.TryLock()) {
    EXPECT_EQ(c.value, 1);
    c.mu.Unlock();
  } else {
    ADD_FAILURE() << "TryLock failed on a free mutex";
  }
  c.mu.ReaderLock();
  EXPECT_EQ(c.value, 1);
  c.mu.ReaderUnlock();
}

// Await returns once another thread makes the condition true, without being
// signalled: releasing the mutex is enough.
TYPED_TEST(MutexTest, AwaitWakesOnConditionChangedByAnotherThread) {
  using S = TypeParam;
  struct State {
    typename S::Mutex mu;
    bool ready ABSL_GUARDED_BY(mu) = false;
    int evaluations ABSL_GUARDED_BY(mu) = 0;  // of the waiter's condition
    bool done ABSL_GUARDED_BY(mu) = false;
  } s;
  std::thread waiter([&s] {
    typename S::MutexLock lock(&s.mu);
    s.mu.Await(typename S::Condition(
        +[](State* st) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          ++st->evaluations;
          return st->ready;
        },
        &s));
    s.done = true;
  });
  {
    typename S::MutexLock lock(&s.mu);
    // Once the waiter's condition has been evaluated (false) and we hold the
    // mutex, the waiter is blocked inside Await.
    if (!s.mu.AwaitWithTimeout(
            typename S::Condition(+[](State* st) ABSL_NO_THREAD_SAFETY_ANALYSIS { return st->evaluations > 0; }, &s),
            kBound)) {
      Stuck("the waiter never evaluated its condition");
    }
    EXPECT_FALSE(s.done);
    s.ready = true;
  }
  {
    typename S::MutexLock lock(&s.mu);
    if (!s.mu.AwaitWithTimeout(typename S::Condition(&s.done), kBound)) Stuck("Await did not wake");
  }
  waiter.join();
}

// A thread that changes the state and then Awaits (rather than unlocks)
// releases the mutex too: other waiters must see the change.
TYPED_TEST(MutexTest, AwaitSeesChangesOfAThreadThatAwaitsInTurn) {
  using S = TypeParam;
  struct State {
    typename S::Mutex mu;
    int stage ABSL_GUARDED_BY(mu) = 0;
  } s;
  static auto stage1 = +[](State* st) ABSL_NO_THREAD_SAFETY_ANALYSIS { return st->stage >= 1; };
  static auto stage2 = +[](State* st) ABSL_NO_THREAD_SAFETY_ANALYSIS { return st->stage >= 2; };
  static auto stage3 = +[](State* st) ABSL_NO_THREAD_SAFETY_ANALYSIS { return st->stage >= 3; };
  std::thread a([&s] {
    typename S::MutexLock lock(&s.mu);
    s.mu.Await(typename S::Condition(stage1, &s));
    s.stage = 2;                                    // b waits for this ...
    s.mu.Await(typename S::Condition(stage3, &s));  // ... while a waits again
  });
  std::thread b([&s] {
    typename S::MutexLock lock(&s.mu);
    s.mu.Await(typename S::Condition(stage2, &s));
    s.stage = 3;
  });
  {
    typename S::MutexLock lock(&s.mu);
    s.stage = 1;
  }
  {
    typename S::MutexLock lock(&s.mu);
    if (!s.mu.AwaitWithTimeout(typename S::Condition(stage3, &s), kBound)) Stuck("stage 3 never reached");
  }
  a.join();
  b.join();
}

TYPED_TEST(MutexTest, AwaitWithTimeoutExpires) {
  using S = TypeParam;
  typename S::Mutex mu;
  bool never = false;
  mu.Lock();
  const absl::Time start = absl::Now();
  EXPECT_FALSE(mu.AwaitWithTimeout(typename S::Condition(&never), absl::Milliseconds(30)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(30));
  mu.AssertHeld();  // held again after the timeout
  EXPECT_FALSE(mu.AwaitWithDeadline(typename S::Condition(&never), absl::Now() - absl::Seconds(1)));
  EXPECT_FALSE(mu.AwaitWithTimeout(typename S::Condition(&never), absl::ZeroDuration()));
  bool yes = true;
  EXPECT_TRUE(mu.AwaitWithTimeout(typename S::Condition(&yes), absl::ZeroDuration()));
  EXPECT_TRUE(mu.AwaitWithDeadline(typename S::Condition(&yes), absl::InfiniteFuture()));
  mu.Unlock();
  mu.AssertNotHeld();
}

TYPED_TEST(MutexTest, AwaitWithTimeoutReturnsTrueWhenTheConditionComesTrue) {
  using S = TypeParam;
  struct State {
    typename S::Mutex mu;
    bool flag ABSL_GUARDED_BY(mu) = false;
  } s;
  std::thread setter([&s] {
    typename S::MutexLock lock(&s.mu);
    s.flag = true;
  });
  {
    typename S::MutexLock lock(&s.mu);
    EXPECT_TRUE(s.mu.AwaitWithTimeout(typename S::Condition(&s.flag), kBound));
  }
  setter.join();
}

TYPED_TEST(MutexTest, LockWhenAndConditionalMutexLock) {
  using S = TypeParam;
  struct State {
    typename S::Mutex mu;
    int value ABSL_GUARDED_BY(mu) = 0;
    bool IsTwo() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return value == 2; }
    bool AtLeastOne() ABSL_NO_THREAD_SAFETY_ANALYSIS { return value >= 1; }
  } s;
  std::thread t([&s] {
    for (int i = 0; i < 2; ++i) {
      typename S::MutexLock lock(&s.mu);
      ++s.value;
    }
  });
  {
    typename S::MutexLock lock(&s.mu, typename S::Condition(&s, &State::AtLeastOne));
    EXPECT_GE(s.value, 1);
  }
  s.mu.LockWhen(typename S::Condition(static_cast<const State*>(&s), &State::IsTwo));
  EXPECT_EQ(s.value, 2);
  s.mu.Unlock();
  t.join();

  bool never = false;
  EXPECT_FALSE(s.mu.LockWhenWithTimeout(typename S::Condition(&never), absl::Milliseconds(1)));
  s.mu.AssertHeld();
  s.mu.Unlock();
  const auto is_two = [&s]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return s.value == 2; };
  EXPECT_TRUE(s.mu.LockWhenWithDeadline(typename S::Condition(&is_two), absl::Now() + kBound));
  s.mu.Unlock();
}

TYPED_TEST(MutexTest, ConditionForms) {
  using S = TypeParam;
  bool b = false;
  EXPECT_FALSE(typename S::Condition(&b).Eval());
  b = true;
  EXPECT_TRUE(typename S::Condition(&b).Eval());
  int n = 3;
  EXPECT_TRUE(typename S::Condition(+[](int* p) { return *p == 3; }, &n).Eval());
  EXPECT_FALSE(typename S::Condition(+[](void* p) { return *static_cast<int*>(p) == 4; }, static_cast<void*>(&n)).Eval());
  const auto functor = [&n] { return n > 2; };
  EXPECT_TRUE(typename S::Condition(&functor).Eval());
  EXPECT_TRUE(S::Condition::kTrue.Eval());
}

// Each in a child process (death-test style), so neither changes the mode of
// this binary's other tests.
#if defined(NDEBUG) && !defined(GRADACC_TSAN)
// Two mutexes taken in both orders, one after the other on one thread: never
// a deadlock, but a cycle in Abseil's lock-order graph.
void LockInBothOrders() {
  absl::Mutex a, b;
  {
    absl::MutexLock la(&a);
    absl::MutexLock lb(&b);
  }
  {
    absl::MutexLock lb(&b);
    absl::MutexLock la(&a);
  }
}

TEST(MutexDeadlockDetectionTest, DebiansAbseilChecksLockOrderByDefault) {
  // What SkipMutexDeadlockDetectionInOptimizedBuilds is for: Debian's
  // Abseil (built without NDEBUG) records every acquisition and aborts on
  // this cycle. Should this fail, Abseil no longer checks by default and
  // the switch costs nothing either way.
  EXPECT_DEATH(LockInBothOrders(), "[Dd]eadlock");
}

TEST(MutexDeadlockDetectionTest, OptimizedBuildsDoNotCheckLockOrder) {
  EXPECT_EXIT(
      {
        SkipMutexDeadlockDetectionInOptimizedBuilds();
        LockInBothOrders();
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}
#endif

}  // namespace
}  // namespace gradacc
