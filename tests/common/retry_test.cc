// The retry helper (common/retry.h) on a fake clock: how many attempts, how
// long each wait, never past the deadline, and which statuses are retried.
#include "common/retry.h"

#include <vector>

#include "absl/strings/match.h"
#include "common/errors.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

// Time that moves only when the loop sleeps.
class FakeClock final : public RetryClock {
 public:
  absl::Time Now() override { return now_; }
  void SleepFor(absl::Duration d) override {
    sleeps.push_back(d);
    now_ += d;
  }
  std::vector<absl::Duration> sleeps;

 private:
  absl::Time now_ = absl::UnixEpoch();
};

RetryPolicy Policy(int attempts, double jitter = 0) {
  RetryPolicy p;
  p.max_attempts = attempts;
  p.initial_backoff = absl::Milliseconds(100);
  p.max_backoff = absl::Milliseconds(700);
  p.multiplier = 2;
  p.jitter = jitter;
  return p;
}

TEST(RetryLoopTest, BacksOffExponentiallyUpToTheCapAndStopsAtMaxAttempts) {
  FakeClock clock;
  RetryLoop loop(Policy(6), absl::InfiniteFuture(), &clock);
  int attempts = 0;
  while (loop.Next()) ++attempts;
  EXPECT_EQ(attempts, 6);
  EXPECT_EQ(loop.attempts(), 6);
  const std::vector<absl::Duration> expected = {absl::Milliseconds(100), absl::Milliseconds(200),
                                                absl::Milliseconds(400), absl::Milliseconds(700),
                                                absl::Milliseconds(700)};
  EXPECT_EQ(clock.sleeps, expected) << "no sleep before the first attempt, none after the last";
}

TEST(RetryLoopTest, JitterStaysWithinItsBoundsAndVaries) {
  FakeClock clock;
  const RetryPolicy policy = Policy(200, 0.5);
  RetryLoop loop(policy, absl::InfiniteFuture(), &clock);
  absl::Duration base = policy.initial_backoff;
  while (loop.Next()) {
    if (loop.attempts() == 1) continue;
    EXPECT_GE(loop.last_backoff(), base * 0.5);
    EXPECT_LE(loop.last_backoff(), std::min(base * 1.5, policy.max_backoff));
    base = std::min(base * 2, policy.max_backoff);
  }
  ASSERT_EQ(clock.sleeps.size(), 199u);
  bool varied = false;
  for (size_t i = 5; i < clock.sleeps.size(); ++i) varied |= clock.sleeps[i] != clock.sleeps[4];
  EXPECT_TRUE(varied) << "every capped wait was the same: no jitter";
}

TEST(RetryLoopTest, NeverSleepsPastTheDeadline) {
  FakeClock clock;
  const absl::Time deadline = clock.Now() + absl::Milliseconds(650);
  RetryLoop loop(Policy(100), deadline, &clock);
  int attempts = 0;
  while (loop.Next()) ++attempts;
  // Waits 100 + 200 reach 300 ms; the next (400 ms) would end past 650 ms.
  EXPECT_EQ(attempts, 3);
  EXPECT_LE(clock.Now(), deadline);
}

TEST(RetryLoopTest, TheFirstAttemptIsAlwaysMade) {
  FakeClock clock;
  RetryLoop loop(Policy(0), clock.Now() - absl::Seconds(1), &clock);
  EXPECT_TRUE(loop.Next());
  EXPECT_FALSE(loop.Next());
  EXPECT_TRUE(clock.sleeps.empty());
}

TEST(RetryTest, RetriesOnlyWhatTheErrorModelSaysToRetry) {
  FakeClock clock;
  int calls = 0;
  // A transport failure, then an overloaded server, then success.
  absl::Status s = Retry(
      Policy(6), absl::InfiniteFuture(),
      [&](int attempt) {
        EXPECT_EQ(attempt, ++calls);
        if (calls == 1) return absl::UnavailableError("connection reset");
        if (calls == 2) return Refusal(v1::ERROR_REASON_OVERLOADED, "busy");
        return absl::OkStatus();
      },
      ShouldRetry, &clock);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(calls, 3);

  // A request that is wrong, or a worker that must rejoin, is not retried.
  for (v1::ErrorReason reason : {v1::ERROR_REASON_MANIFEST, v1::ERROR_REASON_NOT_JOINED,
                                 v1::ERROR_REASON_NOTHING_TO_PUSH, v1::ERROR_REASON_JOB_DONE}) {
    calls = 0;
    s = Retry(
        Policy(6), absl::InfiniteFuture(),
        [&](int) {
          ++calls;
          return Refusal(reason, "no");
        },
        ShouldRetry, &clock);
    EXPECT_EQ(calls, 1) << v1::ErrorReason_Name(reason);
    EXPECT_EQ(ReasonOf(s), reason);
  }
}

TEST(RetryTest, GivingUpKeepsTheReasonAndSaysHowOften) {
  FakeClock clock;
  int calls = 0;
  absl::Status s = Retry(
      Policy(4), absl::InfiniteFuture(),
      [&](int) {
        ++calls;
        return Refusal(v1::ERROR_REASON_SHUTTING_DOWN, "stopping");
      },
      ShouldRetry, &clock);
  EXPECT_EQ(calls, 4);
  EXPECT_EQ(ReasonOf(s), v1::ERROR_REASON_SHUTTING_DOWN);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(s.message(), "gave up after 4 attempts: stopping")) << s;
  EXPECT_EQ(clock.sleeps.size(), 3u);
}

}  // namespace
}  // namespace gradacc
