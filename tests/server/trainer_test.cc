// Unit tests of the Trainer (server/trainer.h): determinism whatever the
// arrival order or the threads, exactly once, stale windows, exact
// averaging. Bad input: trainer_input_test.cc; transports:
// trainer_transport_test.cc; waits, status, elastic membership and
// checkpoints: trainer_lifecycle_test.cc; the running sum:
// trainer_streaming_test.cc.
#include "server/trainer.h"

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
#include "tests/server/trainer_fixtures.h"
#include "tests/test_util.h"

// In the fixtures' namespace: SmallJob, MakeWindow, NewTrainer, Push.
namespace gradacc::trainer_fixtures {
namespace {

TEST(TrainerTest, ArrivalOrderDoesNotChangeTheResult) {
  constexpr uint32_t kWorkers = 5;
  constexpr uint64_t kWindows = 12;
  const v1::JobSpec spec = SmallJob(kWorkers, kWindows, v1::OptimizerSpec::KIND_ADAM);
  std::vector<std::vector<Contribution>> windows;
  for (uint64_t w = 0; w < kWindows; ++w) windows.push_back(MakeWindow(w, kWorkers, 37 * 11 + 11, 1));

  // The test is only meaningful if naive arrival-order summation would differ.
  {
    std::vector<float> fwd(windows[0][0].grad.size(), 0), rev(fwd.size(), 0);
    for (uint32_t w = 0; w < kWorkers; ++w) {
      for (size_t i = 0; i < fwd.size(); ++i) fwd[i] += windows[0][w].grad[i];
      for (size_t i = 0; i < rev.size(); ++i) rev[i] += windows[0][kWorkers - 1 - w].grad[i];
    }
    ASSERT_FALSE(testing::BitIdentical(fwd, rev)) << "gradients too tame to detect order dependence";
  }

  std::vector<float> reference;
  std::mt19937 rng(99);
  for (int order = 0; order < 10; ++order) {
    auto trainer = NewTrainer(spec);
    for (uint64_t w = 0; w < kWindows; ++w) {
      std::vector<uint32_t> perm(kWorkers);
      std::iota(perm.begin(), perm.end(), 0);
      if (order > 0) std::shuffle(perm.begin(), perm.end(), rng);
      for (uint32_t i : perm) ASSERT_TRUE(Push(*trainer, windows[w][i], 1 + order * 7).ok());
    }
    ASSERT_EQ(trainer->version(), kWindows);
    if (order == 0) {
      reference = trainer->Parameters();
    } else {
      EXPECT_TRUE(testing::BitIdentical(trainer->Parameters(), reference)) << "arrival order " << order;
    }
  }
}

std::string ChunkBytes(const ParamSnapshot& s) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(s.chunks.at(0).message.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& slice : slices) out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return out;
}

// The step gives the outgoing version's chunks back for the new one's when
// nothing holds them (VersionPublisher::Retire); a pull that still holds a
// version keeps its bytes, and one that comes meanwhile gets the new version.
TEST(TrainerTest, AVersionAPullHoldsKeepsItsBytes) {
  const v1::JobSpec spec = SmallJob(2, 3, v1::OptimizerSpec::KIND_ADAM);
  auto trainer = NewTrainer(spec);
  const size_t n = 37 * 11 + 11;
  for (const Contribution& c : MakeWindow(0, 2, n, 5)) ASSERT_TRUE(Push(*trainer, c).ok());
  std::shared_ptr<const ParamSnapshot> one = trainer->Current();
  ASSERT_EQ(one->version, 1u);
  ASSERT_TRUE(one->has_chunks);
  EXPECT_FALSE(one->retired);
  const std::string before = ChunkBytes(*one);
  for (const Contribution& c : MakeWindow(1, 2, n, 5)) ASSERT_TRUE(Push(*trainer, c).ok());
  std::shared_ptr<const ParamSnapshot> two = trainer->Current();
  ASSERT_EQ(two->version, 2u);
  EXPECT_EQ(ChunkBytes(*one), before);
  EXPECT_NE(ChunkBytes(*two), before) << "the step changed the parameters";
  // Nothing holds version 2: version 3 takes its place, and a pull of
  // version 2 after that gets version 3 (the job's last) with its chunks.
  two.reset();
  for (const Contribution& c : MakeWindow(2, 2, n, 5)) ASSERT_TRUE(Push(*trainer, c).ok());
  std::shared_ptr<const ParamSnapshot> got;
  trainer->WaitForVersion(2, [&](auto s) { got = *s; });
  ASSERT_NE(got, nullptr);
  EXPECT_EQ(got->version, 3u);
  EXPECT_TRUE(got->has_chunks);
  EXPECT_FALSE(got->retired);
}

// Pulls that come while steps run, as the pull reactor makes them: every
// answer has its chunks (a retired version's pull is answered with the next).
TEST(TrainerTest, PullsDuringStepsAlwaysGetChunks) {
  constexpr uint64_t kWindows = 200;
  const v1::JobSpec spec = SmallJob(1, kWindows, v1::OptimizerSpec::KIND_ADAM);
  auto trainer = NewTrainer(spec);
  const size_t n = 37 * 11 + 11;
  std::atomic<bool> stop{false};
  std::atomic<int> answers{0}, without_chunks{0};
  std::thread puller([&] {
    while (!stop.load()) {
      Mutex mu;
      std::shared_ptr<const ParamSnapshot> full;
      bool answered = false;
      auto keep = [&](std::shared_ptr<const ParamSnapshot> s) {
        MutexLock lock(&mu);
        full = std::move(s);
        answered = true;
      };
      trainer->WaitForVersion(0, [&](absl::StatusOr<std::shared_ptr<const ParamSnapshot>> s) {
        ASSERT_TRUE(s.ok()) << s.status();
        if ((*s)->has_chunks) return keep(*s);
        ++without_chunks;
        trainer->WithChunks(keep);
      });
      MutexLock lock(&mu);
      ASSERT_TRUE(mu.AwaitWithTimeout(Condition(&answered), absl::Seconds(30)));
      ASSERT_TRUE(full->has_chunks) << "version " << full->version;
      ++answers;
      full.reset();
      // Between pulls nothing holds the version: the step may retire it.
      absl::SleepFor(absl::Microseconds(20));
    }
  });
  for (int i = 0; i < 3000 && answers.load() == 0; ++i) absl::SleepFor(absl::Milliseconds(1));
  for (uint64_t w = 0; w < kWindows; ++w) {
    for (const Contribution& c : MakeWindow(w, 1, n, 9)) ASSERT_TRUE(Push(*trainer, c).ok());
  }
  stop = true;
  puller.join();
  EXPECT_EQ(trainer->version(), kWindows);
  EXPECT_GT(answers.load(), 0);
  std::printf("%d pulls, %d of a retired version\n", answers.load(), without_chunks.load());
}

TEST(TrainerTest, ConcurrentPushesAreDeterministic) {
  constexpr uint32_t kWorkers = 6;
  constexpr uint64_t kWindows = 8;
  const v1::JobSpec spec = SmallJob(kWorkers, kWindows);
  std::vector<std::vector<Contribution>> windows;
  for (uint64_t w = 0; w < kWindows; ++w) windows.push_back(MakeWindow(w, kWorkers, 37 * 11 + 11, 2));
  std::vector<float> reference;
  for (int run = 0; run < 3; ++run) {
    // Small pieces and a low parallel threshold: this 418-element model goes
    // through the multi-threaded fused reduction, as big models do.
    TrainerOptions options;
    options.reducer.piece_elements = 64;
    options.reducer.parallel_min_elements = 32;
    auto created = Trainer::Create(spec, options);
    ASSERT_TRUE(created.ok()) << created.status();
    std::unique_ptr<Trainer> trainer = std::move(*created);
    testing::JoinAll(*trainer);
    std::vector<std::thread> threads;
    for (uint32_t k = 0; k < kWorkers; ++k) {
      threads.emplace_back([&, k] {
        for (uint64_t w = 0; w < kWindows; ++w) {
          // Wait for this window to open, as a worker would after its pull.
          while (trainer->version() < w) std::this_thread::yield();
          auto r = Push(*trainer, windows[w][k], 3 + k);
          ASSERT_TRUE(r.ok()) << r.status();
        }
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_EQ(trainer->version(), kWindows);
    if (run == 0) {
      reference = trainer->Parameters();
      // The same bits as one thread with whole-tensor pieces.
      auto single = NewTrainer(spec);
      for (uint64_t w = 0; w < kWindows; ++w) {
        for (uint32_t k = 0; k < kWorkers; ++k) ASSERT_TRUE(Push(*single, windows[w][k]).ok());
      }
      EXPECT_TRUE(testing::BitIdentical(single->Parameters(), reference));
    } else {
      EXPECT_TRUE(testing::BitIdentical(trainer->Parameters(), reference));
    }
  }
}

TEST(TrainerTest, DuplicatesAndRetriesCountOnce) {
  constexpr uint32_t kWorkers = 3;
  constexpr uint64_t kWindows = 10;
  const v1::JobSpec spec = SmallJob(kWorkers, kWindows);
  std::vector<std::vector<Contribution>> windows;
  for (uint64_t w = 0; w < kWindows; ++w) windows.push_back(MakeWindow(w, kWorkers, 37 * 11 + 11, 3));

  auto once = NewTrainer(spec);
  for (auto& win : windows)
    for (auto& c : win) ASSERT_TRUE(Push(*once, c).ok());

  // Every contribution pushed twice in a row: the second is acknowledged as
  // a duplicate (also after its window closed) and not counted.
  auto twice = NewTrainer(spec);
  for (auto& win : windows) {
    for (auto& c : win) {
      ASSERT_TRUE(Push(*twice, c).ok());
      auto again = Push(*twice, c);
      EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
    }
    auto late = Push(*twice, win[0]);
    EXPECT_EQ(late.status().code(), absl::StatusCode::kAlreadyExists) << late.status();
  }
  EXPECT_TRUE(testing::BitIdentical(twice->Parameters(), once->Parameters()));
  EXPECT_EQ(twice->GetStatus().contributions_duplicate(), kWindows * (kWorkers + 1));
  EXPECT_EQ(twice->GetStatus().contributions_accepted(), kWindows * kWorkers);

  // A push broken half-way (the session is dropped before Commit) leaves no
  // trace; the retry with the same key counts once.
  auto broken = NewTrainer(spec);
  for (auto& win : windows) {
    for (auto& c : win) {
      v1::PushHeader h;
      h.set_worker(c.worker);
      h.set_window(c.window);
      h.set_contribution_key(c.key);
      h.set_samples(c.samples);
      h.set_num_elements(c.grad.size());
      auto session = broken->BeginPush(h);
      ASSERT_TRUE(session.ok()) << session.status();
      ASSERT_TRUE((*session)->AddChunk(0, 0, testing::Bytes(c.grad.data(), 200)).ok());
      session->reset();
      ASSERT_TRUE(Push(*broken, c).ok());
    }
  }
  EXPECT_TRUE(testing::BitIdentical(broken->Parameters(), once->Parameters()));
}

TEST(TrainerTest, StaleWindowIsRejectedAndChangesNothing) {
  const v1::JobSpec spec = SmallJob(2, 5);
  auto trainer = NewTrainer(spec);
  auto w0 = MakeWindow(0, 2, 37 * 11 + 11, 4);
  auto w1 = MakeWindow(1, 2, 37 * 11 + 11, 4);
  for (auto& c : w0) ASSERT_TRUE(Push(*trainer, c).ok());
  ASSERT_TRUE(Push(*trainer, w1[0]).ok());
  const std::vector<float> before = trainer->Parameters();
  const v1::Status status_before = trainer->GetStatus();

  Contribution stale = w0[1];
  stale.key = 1000;  // a new key, computed on the old parameters
  auto r = Push(*trainer, stale);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted);
  EXPECT_NE(r.status().message().find("stale"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("open window is 1"), std::string::npos) << r.status();

  Contribution future = w1[1];
  future.window = 2;
  EXPECT_EQ(Push(*trainer, future).status().code(), absl::StatusCode::kFailedPrecondition);

  EXPECT_TRUE(testing::BitIdentical(trainer->Parameters(), before));
  const v1::Status after = trainer->GetStatus();
  EXPECT_EQ(after.window().contributions_received(), status_before.window().contributions_received());
  EXPECT_EQ(after.window().samples_received(), status_before.window().samples_received());
  EXPECT_EQ(after.contributions_stale(), 1u);
  // The window still closes with exactly what it had plus worker 1.
  ASSERT_TRUE(Push(*trainer, w1[1]).ok());
  EXPECT_EQ(trainer->version(), 2u);
}

// Per-sample gradients are small integers so every sum is exact: the window's
// gradient must equal the big-batch mean bit for bit, however the samples
// are split into micro-batches and workers.
TEST(TrainerTest, UnevenMicroBatchesGiveTheBigBatchMean) {
  v1::JobSpec spec;
  auto* t = spec.mutable_model()->add_tensors();
  t->set_name("w");
  t->add_shape(8);
  spec.mutable_optimizer()->set_lr(0.5);
  spec.mutable_window()->set_num_workers(3);
  spec.set_total_steps(1);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> value(-50, 50);
  const std::vector<uint64_t> sizes = {1, 7, 3, 2, 10, 5};  // micro-batch sizes
  const std::vector<uint32_t> owner = {0, 0, 1, 2, 2, 2};  // which worker ran each
  std::vector<std::vector<float>> samples;
  for (uint64_t s : sizes)
    for (uint64_t i = 0; i < s; ++i) {
      samples.emplace_back(8);
      for (float& v : samples.back()) v = static_cast<float>(value(rng));
    }
  std::vector<Contribution> cons(3);
  size_t next = 0;
  for (size_t mb = 0; mb < sizes.size(); ++mb) {
    Contribution& c = cons[owner[mb]];
    c.worker = owner[mb];
    c.grad.resize(8, 0);
    c.samples += sizes[mb];
    for (uint64_t i = 0; i < sizes[mb]; ++i, ++next)
      for (int k = 0; k < 8; ++k) c.grad[k] += samples[next][k];
  }
  for (auto& c : cons) c.samples -= 1;  // Contribution starts at 1
  std::vector<float> big(8, 0);
  for (auto& s : samples)
    for (int k = 0; k < 8; ++k) big[k] += s[k];
  const float n = static_cast<float>(samples.size());

  auto trainer = NewTrainer(spec);
  const std::vector<float> p0 = trainer->Parameters();
  for (auto& c : cons) ASSERT_TRUE(Push(*trainer, c).ok());
  const std::vector<float> p1 = trainer->Parameters();
  for (int k = 0; k < 8; ++k) EXPECT_EQ(p1[k], p0[k] - 0.5f * (big[k] / n)) << k;
}

TEST(TrainerTest, ReductionsMeanOverContributionsAndSum) {
  for (auto reduction : {v1::REDUCTION_MEAN_OVER_CONTRIBUTIONS, v1::REDUCTION_SUM}) {
    v1::JobSpec spec;
    auto* t = spec.mutable_model()->add_tensors();
    t->set_name("w");
    t->add_shape(2);
    spec.mutable_optimizer()->set_lr(1);
    spec.mutable_window()->set_num_workers(2);
    spec.set_reduction(reduction);
    spec.set_total_steps(1);
    auto trainer = NewTrainer(spec);
    Contribution a{0, 0, 0, 3, 0, {2, 4}}, b{1, 0, 0, 1, 0, {6, 8}};
    ASSERT_TRUE(Push(*trainer, a).ok());
    ASSERT_TRUE(Push(*trainer, b).ok());
    const auto p = trainer->Parameters();
    if (reduction == v1::REDUCTION_SUM) {
      EXPECT_EQ(p, (std::vector<float>{-8, -12}));
    } else {
      EXPECT_EQ(p, (std::vector<float>{-4, -6}));
    }
  }
}

}  // namespace
}  // namespace gradacc::trainer_fixtures
