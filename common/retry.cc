#include "common/retry.h"

#include <algorithm>

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/errors.h"

namespace gradacc {
namespace {

class WallClock final : public RetryClock {
 public:
  absl::Time Now() override { return absl::Now(); }
  void SleepFor(absl::Duration duration) override { absl::SleepFor(duration); }
};

}  // namespace

RetryClock& RetryClock::Real() {
  static WallClock* clock = new WallClock();
  return *clock;
}

RetryLoop::RetryLoop(const RetryPolicy& policy, absl::Time deadline, RetryClock* clock)
    : policy_(policy),
      deadline_(deadline),
      clock_(clock != nullptr ? clock : &RetryClock::Real()),
      base_(std::min(policy.initial_backoff, policy.max_backoff)) {}

bool RetryLoop::Next() {
  if (attempts_ == 0) {
    ++attempts_;
    return true;
  }
  if (attempts_ >= std::max(1, policy_.max_attempts)) return false;
  const double jitter = std::clamp(policy_.jitter, 0.0, 1.0);
  const double factor = jitter > 0 ? absl::Uniform<double>(absl::IntervalClosed, bitgen_, 1 - jitter, 1 + jitter) : 1;
  const absl::Duration wait = std::min(base_ * factor, policy_.max_backoff);
  // A retry that could only start at the deadline would fail at once.
  if (clock_->Now() + wait >= deadline_) return false;
  clock_->SleepFor(wait);
  last_backoff_ = wait;
  base_ = std::min(base_ * std::max(1.0, policy_.multiplier), policy_.max_backoff);
  ++attempts_;
  return true;
}

bool ShouldRetry(const absl::Status& status) { return ActionOf(status) == v1::CLIENT_ACTION_RETRY; }

absl::Status Retry(const RetryPolicy& policy, absl::Time deadline, absl::FunctionRef<absl::Status(int)> attempt,
                   absl::FunctionRef<bool(const absl::Status&)> retry, RetryClock* clock) {
  RetryLoop loop(policy, deadline, clock);
  absl::Status status;
  while (loop.Next()) {
    status = attempt(loop.attempts());
    if (!retry(status)) return status;
  }
  return Annotate(status, absl::StrCat("gave up after ", loop.attempts(), " attempts"));
}

}  // namespace gradacc
