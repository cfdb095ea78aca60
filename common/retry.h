// Retrying with backoff: the one loop every retry of this project goes
// through. An operation is tried again only while the error model
// (common/errors.h) says so, at most `max_attempts` times and never past a
// deadline, sleeping a jittered exponential backoff between attempts — so a
// client that cannot succeed neither spins nor hammers a recovering server,
// and many clients that failed together do not retry in lockstep.
//
//   RetryLoop loop(policy, deadline);
//   absl::Status status;
//   while (loop.Next()) {                 // sleeps before every retry
//     status = Call();
//     if (!ShouldRetry(status)) break;
//   }
//
// or, for the common case, Retry(policy, deadline, call).
//
// RetryLoop is thread-compatible (one loop per operation); RetryClock::Real()
// is thread-safe.
#ifndef GRADACC_COMMON_RETRY_H_
#define GRADACC_COMMON_RETRY_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace gradacc {

struct RetryPolicy {
  // Attempts in all, the first one included (>= 1).
  int max_attempts = 6;
  // The wait before the first retry; each later one is `multiplier` times
  // the previous, up to `max_backoff`.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  double multiplier = 2.0;
  // Each wait is scaled by a factor drawn uniformly from
  // [1 - jitter, 1 + jitter] (then capped by max_backoff), so that workers
  // refused together come back spread out.
  double jitter = 0.2;
};

// Time as the retry loop sees it. Tests substitute a fake clock so that
// nothing sleeps and every wait can be checked.
class RetryClock {
 public:
  virtual ~RetryClock() = default;
  virtual absl::Time Now() = 0;
  virtual void SleepFor(absl::Duration duration) = 0;
  // The wall clock (absl::Now, absl::SleepFor). Never destroyed.
  static RetryClock& Real();
};

// The attempts of one retried operation. Not copyable; the clock, when
// given, must outlive the loop.
class RetryLoop {
 public:
  RetryLoop(const RetryPolicy& policy, absl::Time deadline, RetryClock* clock = nullptr);
  RetryLoop(const RetryLoop&) = delete;
  RetryLoop& operator=(const RetryLoop&) = delete;

  // Starts the next attempt. The first call always returns true; a later one
  // sleeps the next backoff and returns true, or returns false without
  // sleeping when max_attempts were made or the backoff would end at or
  // after the deadline.
  bool Next();

  int attempts() const { return attempts_; }  // started so far
  absl::Time deadline() const { return deadline_; }
  // The wait before the latest attempt (zero before the first retry).
  absl::Duration last_backoff() const { return last_backoff_; }
  // The backoff the next retry would wait, before jitter.
  absl::Duration base_backoff() const { return base_; }

 private:
  const RetryPolicy policy_;
  const absl::Time deadline_;
  RetryClock* const clock_;
  absl::BitGen bitgen_;
  int attempts_ = 0;
  absl::Duration base_;
  absl::Duration last_backoff_;
};

// True when the error model says "try the same request again later"
// (ActionOf(status) == CLIENT_ACTION_RETRY): a transport failure, an
// overloaded or restarting server.
bool ShouldRetry(const absl::Status& status);

// Calls `attempt` (with the 1-based attempt number) until it returns a status
// for which `retry` is false (OK included), within the policy's attempts and
// the deadline. Returns that status; when the attempts or the time ran out,
// the last failure with "gave up after N attempts: " before its message (its
// error reason kept).
absl::Status Retry(const RetryPolicy& policy, absl::Time deadline, absl::FunctionRef<absl::Status(int)> attempt,
                   absl::FunctionRef<bool(const absl::Status&)> retry = ShouldRetry, RetryClock* clock = nullptr);

}  // namespace gradacc

#endif  // GRADACC_COMMON_RETRY_H_
