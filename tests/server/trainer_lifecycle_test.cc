// Unit tests of the Trainer (server/trainer.h) over a job's life: parked
// pulls and their wake-ups, status, elastic membership, checkpoints and
// resumption (a shard's part of the last norm too).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include "common/kernels.h"
#include "common/shm.h"
#include "gtest/gtest.h"
#include "server/checkpoint.h"
#include "server/norm_exchange.h"
#include "server/trainer.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/test_util.h"

// In the fixtures' namespace: SmallJob, MakeWindow, NewTrainer, Push.
namespace gradacc::trainer_fixtures {
namespace {

TEST(TrainerWaitTest, PullNamingALostContributionFailsAtOnce) {
  auto t = NewTrainer(SmallJob(2, 3));
  std::vector<testing::Contribution> window = MakeWindow(0, 2, t->size(), 3);
  ASSERT_TRUE(testing::Push(*t, window[0]).ok());
  std::atomic<int> calls{0};
  absl::Status got;
  const uint64_t parked = t->WaitForVersion(
      1,
      [&](absl::StatusOr<std::shared_ptr<const ParamSnapshot>> s) {
        ++calls;
        got = s.status();
      },
      0, 0);
  EXPECT_NE(parked, 0u);  // worker 0's key 0 is here: it waits
  EXPECT_EQ(calls.load(), 0);
  const uint64_t refused = t->WaitForVersion(
      1,
      [&](absl::StatusOr<std::shared_ptr<const ParamSnapshot>> s) {
        ++calls;
        got = s.status();
      },
      1, 0);
  EXPECT_EQ(refused, 0u);  // worker 1 never pushed key 0 here
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(got.code(), absl::StatusCode::kFailedPrecondition) << got;
  EXPECT_TRUE(t->CancelWait(parked));
}

TEST(TrainerWaitTest, ParkedWaitersWakeOnCloseAndOnShutdown) {
  auto trainer = NewTrainer(SmallJob(1, 3));
  std::atomic<int> woke{0};
  std::atomic<uint64_t> seen{0};
  const uint64_t id = trainer->WaitForVersion(1, [&](auto snap) {
    ASSERT_TRUE(snap.ok());
    seen = (*snap)->version;
    ++woke;
  });
  EXPECT_NE(id, 0u);
  EXPECT_EQ(woke, 0);
  const uint64_t cancelled = trainer->WaitForVersion(2, [&](auto) { ADD_FAILURE() << "cancelled waiter ran"; });
  EXPECT_TRUE(trainer->CancelWait(cancelled));
  ASSERT_TRUE(Push(*trainer, MakeWindow(0, 1, 418, 7)[0]).ok());
  // The version is published when Push returns; the parked callbacks run
  // right after, on the thread that published it.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (woke.load() == 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
  EXPECT_EQ(woke, 1);
  EXPECT_EQ(seen, 1u);
  // Already there: answered at once.
  EXPECT_EQ(trainer->WaitForVersion(1, [&](auto snap) { ++woke; }), 0u);
  EXPECT_EQ(woke, 2);
  absl::StatusCode code = absl::StatusCode::kOk;
  trainer->WaitForVersion(3, [&](auto snap) { code = snap.status().code(); });
  trainer->Shutdown();
  EXPECT_EQ(code, absl::StatusCode::kUnavailable);
}

TEST(TrainerStatusTest, ReportsProgressMissingWorkersAndLoss) {
  auto trainer = NewTrainer(SmallJob(3, 2));
  auto w0 = MakeWindow(0, 3, 418, 8);
  ASSERT_TRUE(Push(*trainer, w0[1]).ok());
  v1::Status s = trainer->GetStatus();
  EXPECT_EQ(s.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(s.window().contributions_received(), 1u);
  EXPECT_EQ(s.window().contributions_expected(), 3u);
  EXPECT_EQ(std::vector<uint32_t>(s.window().missing_workers().begin(), s.window().missing_workers().end()),
            (std::vector<uint32_t>{0, 2}));
  EXPECT_EQ(s.workers(1).state(), v1::WORKER_STATE_PUSHED);
  ASSERT_TRUE(Push(*trainer, w0[0]).ok());
  ASSERT_TRUE(Push(*trainer, w0[2]).ok());
  s = trainer->GetStatus();
  EXPECT_EQ(s.step(), 1u);
  EXPECT_DOUBLE_EQ(s.last_loss(), 0.5);
  ASSERT_EQ(s.loss_history_size(), 1);
  EXPECT_GT(s.uptime_seconds(), 0);
  for (auto& c : MakeWindow(1, 3, 418, 8)) ASSERT_TRUE(Push(*trainer, c).ok());
  s = trainer->GetStatus();
  EXPECT_EQ(s.state(), v1::JOB_STATE_DONE);
  EXPECT_GT(s.steps_per_second(), 0);
  EXPECT_EQ(s.window().missing_workers_size(), 0);
  // Done: no more contributions.
  EXPECT_EQ(Push(*trainer, MakeWindow(2, 3, 418, 8)[0]).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(TrainerElasticTest, MembershipChangesAtWindowBoundaries) {
  v1::JobSpec spec = SmallJob(1, 10);
  spec.mutable_window()->set_max_workers(4);
  spec.mutable_window()->set_min_workers(1);
  auto created = Trainer::Create(spec, TrainerOptions());
  ASSERT_TRUE(created.ok()) << created.status();
  Trainer& t = **created;
  auto join = [&](uint32_t w) {
    v1::JoinRequest r;
    r.set_worker(w);
    return t.Join(r).value();
  };
  auto contribution = [&](uint32_t w, uint64_t window) {
    Contribution c = MakeWindow(window, 4, 418, 9)[w];
    c.worker = w;
    return c;
  };
  EXPECT_EQ(join(0).window(), 0u);
  EXPECT_EQ(join(1).window(), 0u);  // window 0 untouched: joins it
  EXPECT_EQ(t.GetStatus().window().contributions_expected(), 2u);
  ASSERT_TRUE(Push(t, contribution(0, 0)).ok());
  // Joining a window that already has contributions: the next one is its first.
  EXPECT_EQ(join(2).window(), 1u);
  EXPECT_EQ(Push(t, contribution(2, 0)).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Push(t, contribution(1, 0)).ok());
  ASSERT_EQ(t.version(), 1u);
  v1::Status s = t.GetStatus();
  EXPECT_EQ(s.window().contributions_expected(), 3u);
  EXPECT_EQ(s.members(), 3u);
  // A member leaving before it contributed is no longer waited for.
  ASSERT_TRUE(Push(t, contribution(0, 1)).ok());
  ASSERT_TRUE(Push(t, contribution(2, 1)).ok());
  EXPECT_EQ(t.version(), 1u);
  v1::LeaveRequest leave;
  leave.set_worker(1);
  ASSERT_TRUE(t.Leave(leave).ok());
  ASSERT_TRUE(t.AwaitVersion(2, absl::Seconds(60)));
  s = t.GetStatus();
  EXPECT_EQ(s.members(), 2u);
  EXPECT_EQ(s.window().contributions_expected(), 2u);
  EXPECT_EQ(s.last_step_samples(), contribution(0, 1).samples + contribution(2, 1).samples);
  // Unknown ids beyond max_workers are still refused.
  v1::JoinRequest r;
  r.set_worker(4);
  EXPECT_EQ(t.Join(r).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainerCheckpointTest, ResumesExactlyAndSkipsCorruptNewest) {
  // Fresh: a folder left by an earlier run with the same pid would resume it.
  const std::string dir = ::testing::TempDir() + "/ckpt_unit_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  v1::JobSpec spec = SmallJob(2, 6, v1::OptimizerSpec::KIND_ADAM);
  TrainerOptions options;
  options.checkpoint_dir = dir;
  std::vector<float> reference;
  {
    auto t = NewTrainer(spec);
    for (uint64_t w = 0; w < 6; ++w)
      for (auto& c : MakeWindow(w, 2, 418, 10)) ASSERT_TRUE(Push(*t, c).ok());
    reference = t->Parameters();
  }
  {
    auto t = Trainer::Create(spec, options);
    ASSERT_TRUE(t.ok());
    testing::JoinAll(**t);
    for (uint64_t w = 0; w < 3; ++w)
      for (auto& c : MakeWindow(w, 2, 418, 10)) ASSERT_TRUE(Push(**t, c).ok());
    // Half of window 3 is lost with the process.
    ASSERT_TRUE(Push(**t, MakeWindow(3, 2, 418, 10)[0]).ok());
  }
  auto t = Trainer::Create(spec, options);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->version(), 3u);
  // The ledger came back: window 2's keys are duplicates, window 3's are not.
  EXPECT_EQ(Push(**t, MakeWindow(2, 2, 418, 10)[0]).status().code(), absl::StatusCode::kAlreadyExists);
  for (uint64_t w = 3; w < 6; ++w)
    for (auto& c : MakeWindow(w, 2, 418, 10)) ASSERT_TRUE(Push(**t, c).ok());
  EXPECT_TRUE(testing::BitIdentical((*t)->Parameters(), reference));
  EXPECT_EQ(ListCheckpoints(dir).size(), 3u);  // keep_checkpoints
  std::filesystem::remove_all(dir);
}

TEST(TrainerCheckpointTest, AResumingTrainerDoesNotAskForInitialParameters) {
  const std::string dir = ::testing::TempDir() + "/ckpt_initial_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  const v1::JobSpec spec = SmallJob(2, 6, v1::OptimizerSpec::KIND_ADAM);
  TrainerOptions options;
  options.checkpoint_dir = dir;
  int asked = 0;
  uint64_t n = 0;
  std::shared_ptr<const FloatBuffer> given;
  const InitialParametersSource source = [&]() -> absl::StatusOr<std::shared_ptr<const FloatBuffer>> {
    ++asked;
    return given;
  };
  {
    auto layout = ModelLayout::FromSpec(spec.model());
    ASSERT_TRUE(layout.ok()) << layout.status();
    n = layout->num_elements();
    FloatBuffer quarters(n);
    std::fill(quarters.data(), quarters.data() + n, 0.25f);
    given = std::make_shared<const FloatBuffer>(std::move(quarters));
    auto t = Trainer::Create(spec, options, source);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(asked, 1);
    const std::vector<float> start = (*t)->Parameters();
    EXPECT_TRUE(std::all_of(start.begin(), start.end(), [](float x) { return x == 0.25f; }));  // the source's
    testing::JoinAll(**t);
    for (auto& c : MakeWindow(0, 2, n, 10)) ASSERT_TRUE(Push(**t, c).ok());
  }
  auto t = Trainer::Create(spec, options, source);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->version(), 1u);
  EXPECT_EQ(asked, 1);  // resumed from the checkpoint alone
  std::filesystem::remove_all(dir);
}

// Shard 0 of 2 with clipping: its only peer's part of every norm is taken as
// zero. Records what the trainer publishes and restores.
class RecordingExchange : public NormExchange {
 public:
  absl::StatusOr<TorchNormState> CarryIn(uint64_t) override { return TorchNormState(); }
  absl::StatusOr<NormTotals> Exchange(uint64_t window, const NormPart& local) override {
    v1::GetNormPartialResponse part;
    for (float f : local.finished) part.add_finished(f);
    published[window] = part;
    return NormTotals{local.finished, local.found_inf};
  }
  std::optional<v1::GetNormPartialResponse> Published(uint64_t window) const override {
    auto it = published.find(window);
    if (it == published.end()) return std::nullopt;
    return it->second;
  }
  void Restore(uint64_t window, const v1::GetNormPartialResponse& part) override {
    restored.emplace_back(window, part);
  }
  std::map<uint64_t, v1::GetNormPartialResponse> published;
  std::vector<std::pair<uint64_t, v1::GetNormPartialResponse>> restored;
};

// A shard's checkpoint keeps its part of the last window's global norm, and
// a shard resumed from it serves that part again (peers of the same
// process may resume one version behind and step that window again).
TEST(TrainerCheckpointTest, ShardCheckpointKeepsItsPartOfTheLastNorm) {
  const std::string dir = ::testing::TempDir() + "/ckpt_norm_" + std::to_string(getpid());
  std::filesystem::remove_all(dir);
  v1::JobSpec spec = SmallJob(2, 6, v1::OptimizerSpec::KIND_ADAM);
  spec.mutable_clipping()->set_max_norm(0.5);
  RecordingExchange first;
  TrainerOptions options;
  options.num_shards = 2;
  options.shard = 0;
  options.checkpoint_dir = dir;
  options.exchange = &first;
  uint64_t shard_size = 0;
  {
    auto trainer = Trainer::Create(spec, options);
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    Trainer& t = **trainer;
    testing::JoinAll(t);
    const v1::Status status = t.GetStatus();
    // Tensor w (37 x 11) is shard 0's whole part: small tensors are not split.
    ASSERT_EQ(status.shard_begin(), 0u);
    ASSERT_EQ(status.shard_end(), 407u);
    shard_size = status.shard_end();
    for (uint64_t window = 0; window < 2; ++window) {
      for (const Contribution& c : MakeWindow(window, 2, shard_size, 5)) {
        auto session = t.BeginPush(testing::HeaderOf(c, shard_size));
        ASSERT_TRUE(session.ok()) << session.status();
        ASSERT_TRUE((*session)->AddChunk(0, 0, testing::Bytes(c.grad.data(), shard_size)).ok());
        ASSERT_TRUE(t.Commit(std::move(*session)).ok());
      }
      ASSERT_TRUE(t.AwaitVersion(window + 1, absl::Seconds(60)));
    }
    t.Shutdown();
  }
  ASSERT_EQ(first.published.count(1), 1u);
  ASSERT_GT(first.published.at(1).finished(0), 0.0f);
  RecordingExchange second;
  options.exchange = &second;
  auto resumed = Trainer::Create(spec, options);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->version(), 2u);
  ASSERT_EQ(second.restored.size(), 1u);
  EXPECT_EQ(second.restored[0].first, 1u);  // window 1, which made version 2
  EXPECT_EQ(second.restored[0].second.SerializeAsString(), first.published.at(1).SerializeAsString());
  (*resumed)->Shutdown();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace gradacc::trainer_fixtures
