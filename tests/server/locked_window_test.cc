// Unit tests of LockedWindow: each operation is whole under the window
// mutex — the Accumulator is told only of what the window accepted, the
// next window opens together with its `open` step, a parked pull is counted
// and uncounted, status comes from one consistent view.
#include "server/locked_window.h"

#include <atomic>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/server/window_fixtures.h"

namespace gradacc {
namespace {

using window_fixtures::Header;
using window_fixtures::Job;
using window_fixtures::JoinOf;

TEST(LockedWindowTest, TheAccumulatorIsToldOnlyOfWhatTheWindowAccepted) {
  const v1::JobSpec spec = Job(2);
  LockedWindow window(&spec, 2, absl::Now(), 3);
  v1::JoinResponse joined;
  ASSERT_TRUE(window.Join(JoinOf(0), absl::Now(), &joined).ok());
  ASSERT_TRUE(window.Join(JoinOf(1), absl::Now(), &joined).ok());
  EXPECT_FALSE(joined.job_done());
  std::optional<LateNote> late;
  ASSERT_TRUE(window.Admit(Header(0, 0, 1), absl::Now(), &late).ok());
  int agreed = 0;
  Slot slot;
  auto accepted = window.Accept(Header(0, 0, 1), &slot, false, absl::Now(), &late, [&] { ++agreed; });
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(agreed, 1);
  EXPECT_FALSE(accepted->closing.has_value());
  // The same push again: a duplicate, not accepted, not told.
  Slot again;
  accepted = window.Accept(Header(0, 0, 1), &again, false, absl::Now(), &late, [&] { ++agreed; });
  EXPECT_EQ(ReasonOf(accepted.status()), v1::ERROR_REASON_DUPLICATE);
  EXPECT_EQ(agreed, 1);
  Slot other;
  accepted = window.Accept(Header(1, 0, 2), &other, false, absl::Now(), &late, [&] { ++agreed; });
  ASSERT_TRUE(accepted.ok());
  EXPECT_EQ(agreed, 2);
  ASSERT_TRUE(accepted->closing.has_value()) << "both in: the window closes";

  // The step: progress and stragglers record it; window 1 opens together
  // with its `open` step.
  v1::StepRecord record;
  record.set_loss(0.5);
  std::vector<uint32_t> stragglers;
  EXPECT_FALSE(window.Stepped(*accepted->closing, 1.0, 4, absl::Now(), &record, &stragglers));
  EXPECT_TRUE(stragglers.empty());
  EXPECT_EQ(record.arrivals().workers_size(), 2) << record.DebugString();
  EXPECT_EQ(window.version(), 0u) << "the window opens when the version is published";
  bool opened_too = false;
  const LockedWindow::Opened opened = window.Advance(1, 0.0f, absl::Now(), [&] { opened_too = true; });
  EXPECT_TRUE(opened_too);
  EXPECT_EQ(opened.version, 1u);
  EXPECT_FALSE(opened.done);
  EXPECT_EQ(window.version(), 1u);
  EXPECT_EQ(ReasonOf(window.Admit(Header(1, 0, 3), absl::Now(), &late)), v1::ERROR_REASON_STALE_WINDOW);
  v1::CheckpointState exported;
  window.Export(1, &exported);
  EXPECT_EQ(exported.version(), 0u) << "Export fills the window's part, the caller the version";
  EXPECT_EQ(exported.workers_size(), 2);
}

TEST(LockedWindowTest, ParkedPullsAreCountedUntilAnsweredOrCancelled) {
  const v1::JobSpec spec = Job(2);
  LockedWindow window(&spec, 2, absl::Now(), 3);
  v1::JoinResponse joined;
  ASSERT_TRUE(window.Join(JoinOf(0), absl::Now(), &joined).ok());
  // A pull naming a push this server does not hold is refused, not parked.
  EXPECT_EQ(ReasonOf(window.ParkPull(0, absl::Now(), /*parks=*/true, 42)), v1::ERROR_REASON_CONTRIBUTION_LOST);
  std::vector<float> params(10, 0.0f);
  ShmTransport shm("", false, params.size(), 2, absl::MakeSpan(params), false);
  auto parked = [&] {
    v1::Status s;
    window.FillStatus(&s, absl::Now(), absl::Seconds(30), shm);
    return s;
  };
  ASSERT_TRUE(window.ParkPull(0, absl::Now(), true, std::nullopt).ok());
  ASSERT_TRUE(window.ParkPull(0, absl::Now(), true, std::nullopt).ok());
  window.PullAnswered(0, absl::Now());
  window.PullCancelled(0);
  window.PullCancelled(0);  // never below zero
  const v1::Status s = parked();
  EXPECT_EQ(s.state(), v1::JOB_STATE_RUNNING);
  ASSERT_EQ(s.workers_size(), 2);
  EXPECT_EQ(s.workers(0).transport(), v1::TRANSPORT_GRPC) << "shared memory is off";
  EXPECT_GT(s.workers(0).last_seen_unix_micros(), 0);
  EXPECT_EQ(s.window().contributions_expected(), 2u);
}

TEST(LockedWindowTest, StatusIsOneConsistentViewWhilePushesArrive) {
  // Status read while both workers push window after window: the counts it
  // shows never disagree with each other (one lock over all of them).
  const v1::JobSpec spec = Job(2);
  LockedWindow window(&spec, 2, absl::Now(), 3);
  v1::JoinResponse joined;
  ASSERT_TRUE(window.Join(JoinOf(0), absl::Now(), &joined).ok());
  ASSERT_TRUE(window.Join(JoinOf(1), absl::Now(), &joined).ok());
  std::vector<float> params(10, 0.0f);
  ShmTransport shm("", false, params.size(), 2, absl::MakeSpan(params), false);
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      v1::Status s;
      window.FillStatus(&s, absl::Now(), absl::Seconds(30), shm);
      uint64_t per_worker = 0;
      for (const v1::WorkerStatus& w : s.workers()) per_worker += w.contributions();
      ASSERT_EQ(per_worker, s.contributions_accepted());
      ASSERT_LE(s.window().contributions_received(), 2u);
    }
  });
  for (uint64_t w = 0; w < 4; ++w) {
    std::optional<ClosingWindow> closing;
    for (uint32_t k = 0; k < 2; ++k) {
      std::optional<LateNote> late;
      Slot slot;
      auto accepted = window.Accept(Header(k, w, 10 * w + k + 1), &slot, false, absl::Now(), &late, [] {});
      ASSERT_TRUE(accepted.ok()) << accepted.status();
      if (accepted->closing.has_value()) closing = std::move(accepted->closing);
    }
    ASSERT_TRUE(closing.has_value());
    v1::StepRecord record;
    std::vector<uint32_t> stragglers;
    window.Stepped(*closing, 1.0, 4, absl::Now(), &record, &stragglers);
    window.Advance(w + 1, 0.0f, absl::Now(), [] {});
  }
  stop = true;
  reader.join();
  EXPECT_EQ(window.version(), 4u);
}

TEST(LockedWindowTest, ListenersAndStop) {
  const v1::JobSpec spec = Job(1);
  LockedWindow window(&spec, 1, absl::Now(), 3);
  int calls = 0;
  const uint64_t a = window.AddListener([&] { ++calls; });
  window.AddListener([&] { calls += 10; });
  for (const auto& l : window.Listeners()) (*l)();
  EXPECT_EQ(calls, 11);
  window.RemoveListener(a);
  ASSERT_EQ(window.Listeners().size(), 1u);
  EXPECT_TRUE(window.Stop());
  EXPECT_FALSE(window.Stop()) << "only the first stop counts";
  std::optional<LateNote> late;
  EXPECT_FALSE(window.Admit(Header(0, 0, 1), absl::Now(), &late).ok()) << "a stopped window admits nothing";
}

}  // namespace
}  // namespace gradacc
