// The Trainer with its running sum (server/accumulator.h): pushes broken at
// every chunk boundary change nothing, a duplicate that arrives while its
// original is in the running sum counts once, a window closing on a quorum
// takes a push still in flight back out — each bit-identical to the window
// without the broken, duplicate or late push.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "server/trainer.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/test_util.h"

namespace gradacc {
namespace {

using testing::Contribution;
using testing::Push;

constexpr uint64_t kChunk = 50;  // tensor w: 9 chunks, b: 1

v1::JobSpec Job(uint32_t workers, uint64_t steps) {
  return trainer_fixtures::SmallJob(workers, steps, v1::OptimizerSpec::KIND_ADAM);
}

std::vector<Contribution> Window(uint64_t window, uint32_t workers, uint32_t seed) {
  return trainer_fixtures::MakeWindow(window, workers, 37 * 11 + 11, seed);
}

using trainer_fixtures::NewTrainer;

// Begins `c`'s push and sends its first `chunks` chunks (of kChunk elements,
// in tensor order); the session is what a stream holds.
std::unique_ptr<PushSession> Partial(Trainer& trainer, const Contribution& c, size_t chunks) {
  auto session = trainer.BeginPush(testing::HeaderOf(c, trainer.layout().num_elements()));
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return nullptr;
  size_t sent = 0;
  for (size_t i = 0; i < trainer.layout().tensors().size(); ++i) {
    const auto& t = trainer.layout().tensors()[i];
    for (uint64_t off = 0; off < t.size && sent < chunks; off += kChunk, ++sent) {
      const uint64_t n = std::min(kChunk, t.size - off);
      EXPECT_TRUE(
          (*session)->AddChunk(static_cast<uint32_t>(i), off, testing::Bytes(c.grad.data() + t.offset + off, n)).ok());
    }
  }
  return std::move(*session);
}

std::vector<float> Reference(const v1::JobSpec& spec, const std::vector<std::vector<Contribution>>& windows) {
  auto trainer = NewTrainer(spec);
  for (const auto& w : windows) {
    for (const Contribution& c : w) EXPECT_TRUE(Push(*trainer, c, kChunk).ok());
  }
  return trainer->Parameters();
}

// Worker `victim`'s push breaks after 0..10 chunks (10: all of them, never
// committed) — while it is the head of the order (its chunks in the running
// sum), or behind contributions already folded or staged — then is pushed
// again; every window ends bit-identical to the one without the break.
TEST(TrainerStreamingTest, APushBrokenAtEveryChunkBoundaryChangesNothing) {
  constexpr uint32_t kWorkers = 3;
  const v1::JobSpec spec = Job(kWorkers, 2);
  const std::vector<std::vector<Contribution>> windows = {Window(0, kWorkers, 1), Window(1, kWorkers, 1)};
  const std::vector<float> want = Reference(spec, windows);
  for (uint32_t victim = 0; victim < kWorkers; ++victim) {
    for (size_t boundary = 0; boundary <= 10; ++boundary) {
      auto trainer = NewTrainer(spec);
      for (const auto& w : windows) {
        // The others first (worker 0 folded, the rest staged), then the
        // victim breaks, then comes back.
        for (const Contribution& c : w) {
          if (c.worker != victim) {
            ASSERT_TRUE(Push(*trainer, c, kChunk).ok()) << c.worker;
          }
          if (c.worker + 1 == victim || (victim == 0 && c.worker == 0)) {
            Partial(*trainer, w[victim], boundary).reset();  // broken off
          }
        }
        const v1::Status mid = trainer->GetStatus();
        EXPECT_EQ(mid.window().contributions_received(), kWorkers - 1) << "the broken push counted for nothing";
        ASSERT_TRUE(Push(*trainer, w[victim], kChunk).ok());
      }
      EXPECT_TRUE(testing::BitIdentical(trainer->Parameters(), want))
          << "worker " << victim << " broken after " << boundary << " chunks";
      EXPECT_EQ(trainer->accumulator_stats().staged_bytes, 0u);
    }
  }
}

// A retry of a push that is still arriving (the client gave up on it) and
// its original: whichever completes first counts, the other is refused as a
// duplicate when it completes, and never reaches the sum.
TEST(TrainerStreamingTest, ADuplicateWhileTheOriginalIsInTheRunningSumCountsOnce) {
  constexpr uint32_t kWorkers = 2;
  const v1::JobSpec spec = Job(kWorkers, 1);
  const std::vector<std::vector<Contribution>> windows = {Window(0, kWorkers, 2)};
  const std::vector<float> want = Reference(spec, windows);
  for (bool retry_wins : {false, true}) {
    auto trainer = NewTrainer(spec);
    const Contribution& c = windows[0][0];
    // The original is the head: its first four chunks are in the sum.
    std::unique_ptr<PushSession> original = Partial(*trainer, c, 4);
    std::unique_ptr<PushSession> retry = Partial(*trainer, c, 6);
    std::unique_ptr<PushSession>& first = retry_wins ? retry : original;
    std::unique_ptr<PushSession>& second = retry_wins ? original : retry;
    auto finish = [&](std::unique_ptr<PushSession>& s, size_t from) {
      size_t sent = 0;
      for (size_t i = 0; i < trainer->layout().tensors().size(); ++i) {
        const auto& t = trainer->layout().tensors()[i];
        for (uint64_t off = 0; off < t.size; off += kChunk, ++sent) {
          if (sent < from) continue;
          const uint64_t n = std::min(kChunk, t.size - off);
          ASSERT_TRUE(
              s->AddChunk(static_cast<uint32_t>(i), off, testing::Bytes(c.grad.data() + t.offset + off, n)).ok());
        }
      }
    };
    finish(first, retry_wins ? 6 : 4);
    ASSERT_TRUE(trainer->Commit(std::move(first)).ok());
    finish(second, retry_wins ? 4 : 6);
    auto dup = trainer->Commit(std::move(second));
    EXPECT_EQ(ReasonOf(dup.status()), v1::ERROR_REASON_DUPLICATE) << dup.status();
    ASSERT_TRUE(Push(*trainer, windows[0][1], kChunk).ok());
    EXPECT_TRUE(testing::BitIdentical(trainer->Parameters(), want)) << (retry_wins ? "retry" : "original") << " won";
    EXPECT_EQ(trainer->GetStatus().contributions_duplicate(), 1u);
  }
}

// QUORUM: the window closes at its deadline with workers 1 and 2 while
// worker 0's push is still arriving (the head of the order, its chunks in
// the running sum): they come back out, and the window equals one that
// never saw worker 0; its stream is then told the window is gone.
TEST(TrainerStreamingTest, AQuorumCloseTakesAPushInFlightBackOut) {
  constexpr uint32_t kWorkers = 3;
  v1::JobSpec quorum = Job(kWorkers, 1);
  quorum.mutable_window()->set_policy(v1::WindowRule::POLICY_QUORUM);
  quorum.mutable_window()->set_quorum(2);
  quorum.mutable_window()->set_deadline_ms(1);
  const std::vector<Contribution> w = Window(0, kWorkers, 3);
  auto trainer = NewTrainer(quorum);
  std::unique_ptr<PushSession> late = Partial(*trainer, w[0], 5);
  ASSERT_TRUE(Push(*trainer, w[1], kChunk).ok());
  ASSERT_TRUE(Push(*trainer, w[2], kChunk).ok());
  ASSERT_TRUE(trainer->AwaitVersion(1, absl::Seconds(30)));
  const std::string b(kChunk * sizeof(float), '\0');
  EXPECT_EQ(ReasonOf(late->AddChunk(0, 5 * kChunk, b)), v1::ERROR_REASON_STALE_WINDOW);

  auto reference = NewTrainer(quorum);
  ASSERT_TRUE(Push(*reference, w[1], kChunk).ok());
  ASSERT_TRUE(Push(*reference, w[2], kChunk).ok());
  ASSERT_TRUE(reference->AwaitVersion(1, absl::Seconds(30)));
  EXPECT_TRUE(testing::BitIdentical(trainer->Parameters(), reference->Parameters()));
}

}  // namespace
}  // namespace gradacc
