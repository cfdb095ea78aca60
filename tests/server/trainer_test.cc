// Unit tests of the window state machine (server/trainer.h): determinism,
// exactly-once, window isolation, exact averaging, bad input, parked pulls.
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
#include "tests/test_util.h"

namespace gradacc {
namespace {

using testing::Contribution;
using testing::Push;

v1::JobSpec SmallJob(uint32_t workers, uint64_t steps, v1::OptimizerSpec::Kind kind = v1::OptimizerSpec::KIND_SGD) {
  v1::JobSpec spec;
  spec.set_job_id("unit");
  auto* w = spec.mutable_model()->add_tensors();
  w->set_name("w");
  w->add_shape(37);
  w->add_shape(11);
  w->mutable_init()->mutable_uniform()->set_low(-1);
  w->mutable_init()->mutable_uniform()->set_high(1);
  auto* b = spec.mutable_model()->add_tensors();
  b->set_name("b");
  b->add_shape(11);
  spec.mutable_optimizer()->set_kind(kind);
  spec.mutable_optimizer()->set_lr(0.01);
  spec.mutable_optimizer()->mutable_sgd()->set_momentum(0.9);
  spec.mutable_window()->set_num_workers(workers);
  spec.set_total_steps(steps);
  spec.set_seed(3);
  return spec;
}

// Gradients spanning many magnitudes, so that float addition order matters.
std::vector<Contribution> MakeWindow(uint64_t window, uint32_t workers, size_t n, uint32_t seed) {
  std::mt19937 rng(seed * 7919 + static_cast<uint32_t>(window));
  std::uniform_real_distribution<float> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-12, 12);
  std::uniform_int_distribution<int> samples(1, 40);
  std::vector<Contribution> out(workers);
  for (uint32_t w = 0; w < workers; ++w) {
    out[w].worker = w;
    out[w].window = window;
    out[w].key = window;
    out[w].samples = samples(rng);
    out[w].loss_sum = out[w].samples * 0.5;
    out[w].grad.resize(n);
    for (float& g : out[w].grad) g = std::ldexp(mantissa(rng), exponent(rng));
  }
  return out;
}

std::unique_ptr<Trainer> NewTrainer(const v1::JobSpec& spec) {
  auto t = Trainer::Create(spec, TrainerOptions());
  EXPECT_TRUE(t.ok()) << t.status();
  testing::JoinAll(**t);
  return std::move(*t);
}

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

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    trainer_ = NewTrainer(SmallJob(2, 3));
    good_ = MakeWindow(0, 2, 37 * 11 + 11, 6);
    ASSERT_TRUE(Push(*trainer_, good_[0]).ok());
    before_ = trainer_->GetStatus();
    params_ = trainer_->Parameters();
  }
  v1::PushHeader Header() {
    v1::PushHeader h;
    h.set_worker(1);
    h.set_window(0);
    h.set_contribution_key(0);
    h.set_samples(4);
    h.set_num_elements(37 * 11 + 11);
    return h;
  }
  // The window is as it was, and completing it still gives the right answer.
  void ExpectUnchanged() {
    const v1::Status now = trainer_->GetStatus();
    EXPECT_EQ(now.window().contributions_received(), before_.window().contributions_received());
    EXPECT_EQ(now.window().samples_received(), before_.window().samples_received());
    EXPECT_EQ(now.step(), 0u);
    EXPECT_TRUE(testing::BitIdentical(trainer_->Parameters(), params_));
    auto reference = NewTrainer(SmallJob(2, 3));
    for (auto& c : good_) ASSERT_TRUE(Push(*reference, c).ok());
    ASSERT_TRUE(Push(*trainer_, good_[1]).ok());
    EXPECT_TRUE(testing::BitIdentical(trainer_->Parameters(), reference->Parameters()));
  }
  absl::Status Chunked(v1::PushHeader h, std::function<absl::Status(PushSession&)> feed) {
    auto s = trainer_->BeginPush(h);
    if (!s.ok()) return s.status();
    absl::Status st = feed(**s);
    if (!st.ok()) return st;
    return trainer_->Commit(std::move(*s)).status();
  }
  std::unique_ptr<Trainer> trainer_;
  std::vector<Contribution> good_;
  v1::Status before_;
  std::vector<float> params_;
};

TEST_F(BadInputTest, UnknownJob) {
  auto h = Header();
  h.set_job_id("nope");
  EXPECT_EQ(trainer_->BeginPush(h).status().code(), absl::StatusCode::kNotFound);
  ExpectUnchanged();
}

TEST_F(BadInputTest, UnknownWorker) {
  auto h = Header();
  h.set_worker(2);
  EXPECT_EQ(trainer_->BeginPush(h).status().code(), absl::StatusCode::kInvalidArgument);
  ExpectUnchanged();
}

TEST_F(BadInputTest, AbsurdSizeIsRejectedBeforeAllocation) {
  auto h = Header();
  h.set_num_elements(uint64_t{1} << 50);
  auto s = trainer_->BeginPush(h);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("declares"), std::string::npos);
  ExpectUnchanged();
}

TEST_F(BadInputTest, WrongTensorIndexPastEndOverlapMissingNaN) {
  const auto& g = good_[1].grad;
  auto code = [&](std::function<absl::Status(PushSession&)> feed) { return Chunked(Header(), feed).code(); };
  EXPECT_EQ(code([&](PushSession& s) { return s.AddChunk(2, 0, testing::Bytes(g.data(), 4)); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([&](PushSession& s) { return s.AddChunk(1, 8, testing::Bytes(g.data(), 4)); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([&](PushSession& s) { return s.AddChunk(0, 0, std::string(7, '\0')); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([&](PushSession& s) {
              auto st = s.AddChunk(0, 0, testing::Bytes(g.data(), 100));
              return st.ok() ? s.AddChunk(0, 99, testing::Bytes(g.data(), 10)) : st;
            }),
            absl::StatusCode::kInvalidArgument);
  // Missing chunks: everything but tensor "b" arrives, then Commit.
  absl::Status missing = Chunked(Header(), [&](PushSession& s) { return s.AddChunk(0, 0, testing::Bytes(g.data(), 407)); });
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("tensor 'b'"), std::string::npos) << missing;
  std::vector<float> nan = g;
  nan[17] = std::nanf("");
  absl::Status s = Chunked(Header(), [&](PushSession& p) { return p.AddChunk(0, 0, testing::Bytes(nan.data(), 407)); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("not finite"), std::string::npos) << s;
  ExpectUnchanged();
}

TEST_F(BadInputTest, PushBeforeJoin) {
  auto trainer = Trainer::Create(SmallJob(2, 3), TrainerOptions());
  ASSERT_TRUE(trainer.ok());
  auto s = (*trainer)->BeginPush(Header());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("Join"), std::string::npos);
  ExpectUnchanged();
}

TEST_F(BadInputTest, AbsurdSamplesAndSecondKeyForSameWindow) {
  auto h = Header();
  h.set_samples(uint64_t{1} << 50);
  EXPECT_EQ(trainer_->BeginPush(h).status().code(), absl::StatusCode::kInvalidArgument);
  Contribution again = good_[0];
  again.key = 77;
  EXPECT_EQ(Push(*trainer_, again).status().code(), absl::StatusCode::kFailedPrecondition);
  ExpectUnchanged();
}

// Shared memory, driven directly: a worker attaches, writes its gradient
// into its segment and pushes the header only. NaN in the segment is
// refused and counts nothing; the results equal the chunked path's bits.
TEST(TrainerSharedMemoryTest, SegmentPushesMatchChunksAndNaNIsRefused) {
  constexpr uint32_t kWorkers = 3;
  const v1::JobSpec spec = SmallJob(kWorkers, 4, v1::OptimizerSpec::KIND_ADAM);
  const std::string dir = ::testing::TempDir() + "/shm_unit";
  std::filesystem::create_directories(dir);
  TrainerOptions options;
  options.shared_memory_dir = dir;
  auto shm = Trainer::Create(spec, options);
  ASSERT_TRUE(shm.ok()) << shm.status();
  ASSERT_TRUE((*shm)->shared_memory_on());
  testing::JoinAll(**shm);
  auto grpc = NewTrainer(spec);
  const size_t n = (*shm)->size();
  std::vector<std::unique_ptr<ShmSegment>> segments;
  std::vector<uint64_t> generations;
  for (uint32_t w = 0; w < kWorkers; ++w) {
    v1::AttachSharedMemoryRequest r;
    r.set_worker(w);
    auto offer = (*shm)->AttachSharedMemory(r);
    ASSERT_TRUE(offer.ok() && offer->available()) << offer.status() << offer->reason();
    auto segment = ShmSegment::Open(offer->grad_path(), true, n, {offer->nonce_hi(), offer->nonce_lo()});
    ASSERT_TRUE(segment.ok()) << segment.status();
    segments.push_back(*std::move(segment));
    generations.push_back(offer->generation());
    // A wrong nonce is refused: another server's segment.
    EXPECT_FALSE(ShmSegment::Open(offer->params_path(), false, n, {offer->nonce_hi(), offer->nonce_lo() + 1}).ok());
  }
  ASSERT_TRUE(testing::BitIdentical((*shm)->Parameters(), grpc->Parameters())) << "initial";
  auto header = [&](const testing::Contribution& c) {
    v1::PushHeader h = testing::HeaderOf(c, n);
    h.set_shared_memory(true);
    h.set_shared_memory_generation(generations[c.worker]);
    return h;
  };
  for (uint64_t v = 0; v < 4; ++v) {
    const std::vector<testing::Contribution> window = MakeWindow(v, kWorkers, n, 4);
    for (uint32_t w = 0; w < kWorkers; ++w) {
      const testing::Contribution& c = window[kWorkers - 1 - w];  // reverse arrival
      std::copy(c.grad.begin(), c.grad.end(), segments[c.worker]->data());
      if (v == 1 && c.worker == 1) {
        segments[1]->data()[17] = std::numeric_limits<float>::quiet_NaN();
        auto session = (*shm)->BeginPush(header(c));
        ASSERT_TRUE(session.ok()) << session.status();
        EXPECT_EQ((*session)->AddChunk(0, 0, testing::Bytes(c.grad.data(), 1)).code(),
                  absl::StatusCode::kInvalidArgument);  // no chunks on a segment push
        session = (*shm)->BeginPush(header(c));
        ASSERT_TRUE(session.ok()) << session.status();
        auto refused = (*shm)->Commit(std::move(*session));
        EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_NE(refused.status().message().find("not finite at element 17"), std::string::npos) << refused.status();
        EXPECT_EQ((*shm)->GetStatus().window().contributions_received(), w);
        segments[1]->data()[17] = c.grad[17];
      }
      auto session = (*shm)->BeginPush(header(c));
      ASSERT_TRUE(session.ok()) << session.status();
      auto committed = (*shm)->Commit(std::move(*session));
      ASSERT_TRUE(committed.ok()) << committed.status();
      if (committed->closed_window) {
        ASSERT_TRUE((*shm)->AwaitVersion(v + 1, absl::Seconds(60)));
      }
      ASSERT_TRUE(testing::Push(*grpc, c).ok());
    }
    ASSERT_TRUE(testing::BitIdentical((*shm)->Parameters(), grpc->Parameters())) << "after window " << v;
  }
  EXPECT_TRUE(testing::BitIdentical((*shm)->Parameters(), grpc->Parameters()));
  EXPECT_EQ((*shm)->GetStatus().workers(0).transport(), v1::TRANSPORT_SHARED_MEMORY);
  EXPECT_EQ(grpc->GetStatus().workers(0).transport(), v1::TRANSPORT_GRPC);
  EXPECT_EQ(grpc->GetStatus().shared_memory_off_reason(), "off on this server (--shared_memory_dir is empty)");
}

// Hierarchical reduction: worker 0 joins and pushes for 1 and 2.
// Issue "One clear core", defect 1: a restarted worker attaches again; the
// segment holding its accepted contribution must not be handed to it, or
// its fresh gradient would change what the server accepted.
TEST(TrainerSharedMemoryTest, ARestartedWorkerCannotChangeAnAcceptedContribution) {
  constexpr uint32_t kWorkers = 2;
  const v1::JobSpec spec = SmallJob(kWorkers, 2, v1::OptimizerSpec::KIND_ADAM);
  const std::string dir = ::testing::TempDir() + "/shm_restart";
  std::filesystem::create_directories(dir);
  TrainerOptions options;
  options.shared_memory_dir = dir;
  auto shm = Trainer::Create(spec, options);
  ASSERT_TRUE(shm.ok()) << shm.status();
  testing::JoinAll(**shm);
  auto reference = NewTrainer(spec);
  const size_t n = (*shm)->size();
  const std::vector<testing::Contribution> window = MakeWindow(0, kWorkers, n, 5);
  auto attach = [&](uint32_t w) {
    v1::AttachSharedMemoryRequest r;
    r.set_worker(w);
    auto offer = (*shm)->AttachSharedMemory(r);
    EXPECT_TRUE(offer.ok() && offer->available());
    auto segment = ShmSegment::Open(offer->grad_path(), true, n, {offer->nonce_hi(), offer->nonce_lo()});
    EXPECT_TRUE(segment.ok()) << segment.status();
    return std::make_pair(*std::move(segment), offer->generation());
  };
  auto push = [&](const testing::Contribution& c, uint64_t generation) {
    v1::PushHeader h = testing::HeaderOf(c, n);
    h.set_shared_memory(true);
    h.set_shared_memory_generation(generation);
    auto session = (*shm)->BeginPush(h);
    if (!session.ok()) return session.status();
    return (*shm)->Commit(std::move(*session)).status();
  };
  auto [first, first_generation] = attach(0);
  std::copy(window[0].grad.begin(), window[0].grad.end(), first->data());
  ASSERT_TRUE(push(window[0], first_generation).ok());
  // Worker 0 restarts: a new process attaches, zeroes and recomputes into
  // whatever segment it was given, then pushes its (different) gradient.
  first.reset();
  auto [second, second_generation] = attach(0);
  testing::Contribution changed = window[0];
  for (float& g : changed.grad) g *= -3;
  std::copy(changed.grad.begin(), changed.grad.end(), second->data());
  EXPECT_EQ(push(changed, second_generation).code(), absl::StatusCode::kAlreadyExists);
  // Duplicates are recognised before the segment is looked at.
  EXPECT_EQ(push(window[0], first_generation).code(), absl::StatusCode::kAlreadyExists);
  auto [other, other_generation] = attach(1);
  std::copy(window[1].grad.begin(), window[1].grad.end(), other->data());
  ASSERT_TRUE(push(window[1], other_generation).ok());
  ASSERT_TRUE((*shm)->AwaitVersion(1, absl::Seconds(60)));
  for (const auto& c : window) ASSERT_TRUE(Push(*reference, c).ok());
  EXPECT_TRUE(testing::BitIdentical((*shm)->Parameters(), reference->Parameters()))
      << "the accepted contribution of worker 0 changed after its restart";
}

TEST(TrainerHierarchicalTest, CoversCountForEachWorkerAndAreChecked) {
  const v1::JobSpec spec = SmallJob(3, 2);
  auto t = Trainer::Create(spec, TrainerOptions());
  ASSERT_TRUE(t.ok());
  const size_t n = (*t)->size();
  std::vector<float> sum(n);
  for (size_t i = 0; i < n; ++i) sum[i] = 0.001f * static_cast<float>(i % 17);
  v1::JoinRequest join;
  join.set_worker(0);
  join.add_covers(1);
  join.add_covers(1 + 1);
  ASSERT_TRUE((*t)->Join(join).ok());
  // Worker 2 cannot push for worker 1 (it did not join for it).
  v1::JoinRequest other;
  other.set_worker(2);
  ASSERT_TRUE((*t)->Join(other).ok());
  v1::PushHeader h;
  h.set_worker(2);
  h.add_covers(1);
  h.set_num_elements(n);
  h.set_samples(3);
  EXPECT_EQ((*t)->BeginPush(h).status().code(), absl::StatusCode::kFailedPrecondition);
  // Worker 2's own join took it back; worker 0 joins for both again.
  ASSERT_TRUE((*t)->Join(join).ok());
  testing::Contribution c;
  c.worker = 0;
  c.samples = 12;
  c.grad = sum;
  v1::PushHeader bad;
  bad.set_worker(0);
  bad.add_covers(2);
  bad.add_covers(1);  // not increasing
  bad.set_num_elements(n);
  EXPECT_EQ((*t)->BeginPush(bad).status().code(), absl::StatusCode::kInvalidArgument);
  // A push with covers counts three contributions and closes the window.
  v1::PushHeader good;
  good.set_worker(0);
  good.add_covers(1);
  good.add_covers(2);
  good.set_num_elements(n);
  good.set_samples(12);
  good.set_micro_batches(6);
  auto session = (*t)->BeginPush(good);
  ASSERT_TRUE(session.ok()) << session.status();
  for (size_t i = 0; i < (*t)->layout().tensors().size(); ++i) {
    const auto& tensor = (*t)->layout().tensors()[i];
    ASSERT_TRUE((*session)->AddChunk(static_cast<uint32_t>(i), 0, testing::Bytes(sum.data() + tensor.offset, tensor.size)).ok());
  }
  auto result = (*t)->Commit(std::move(*session));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->closed_window);
  EXPECT_EQ(result->received, 3u);
  ASSERT_TRUE((*t)->AwaitVersion(1, absl::Seconds(60)));
  const v1::Status s = (*t)->GetStatus();
  EXPECT_EQ(s.step(), 1u);
  EXPECT_EQ(s.workers(1).contributions(), 1u);
  EXPECT_EQ(s.workers(1).transport(), v1::TRANSPORT_HIERARCHICAL);
  EXPECT_EQ(s.workers(1).covered_by(), 0);
  EXPECT_EQ(s.last_step_samples(), 12u);
}

// Compressed gradients: bf16 and f16 on the wire, f32 in the accumulator.
// One SGD step at lr 1 moves the parameters by exactly the reduced
// gradient, so the difference to the f32 run is the compression error,
// which must stay within the formats' rounding bound: each element is off by
// at most u * |g| (u = 2^-8 for bf16, 2^-11 for f16, all values normal
// here), plus f32 rounding of the sums.
TEST(TrainerCompressionTest, Bf16AndF16StayWithinTheirRoundingBound) {
  constexpr uint32_t kWorkers = 3;
  v1::JobSpec spec = SmallJob(kWorkers, 1);
  spec.mutable_optimizer()->set_lr(1.0);
  spec.mutable_optimizer()->mutable_sgd()->set_momentum(0);
  std::vector<testing::Contribution> window = MakeWindow(0, kWorkers, 37 * 11 + 11, 9);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-7, 7);
  for (auto& c : window) {
    for (float& g : c.grad) {
      g = std::ldexp(mantissa(rng), exponent(rng));
      if (std::fabs(g) < 1.0f / 128) g = 1.0f / 64;  // keep every value normal in f16
    }
  }
  uint64_t samples = 0;
  std::vector<double> magnitude(window[0].grad.size(), 0.0);
  for (const auto& c : window) {
    samples += c.samples;
    for (size_t i = 0; i < magnitude.size(); ++i) magnitude[i] += std::fabs(c.grad[i]);
  }
  auto run = [&](v1::WireFormat wire) {
    auto t = NewTrainer(spec);
    const std::vector<float> before = t->Parameters();
    for (const auto& c : window) {
      v1::PushHeader h = testing::HeaderOf(c, t->size());
      h.set_wire_format(wire);
      auto session = t->BeginPush(h);
      EXPECT_TRUE(session.ok()) << session.status();
      for (size_t i = 0; i < t->layout().tensors().size(); ++i) {
        const auto& tensor = t->layout().tensors()[i];
        const auto values = absl::MakeConstSpan(c.grad.data() + tensor.offset, tensor.size);
        std::string bytes(tensor.size * (wire == v1::WIRE_FORMAT_F32 ? 4 : 2), '\0');
        if (wire == v1::WIRE_FORMAT_BF16) EncodeBf16(values, bytes.data());
        if (wire == v1::WIRE_FORMAT_F16) EncodeF16(values, bytes.data());
        if (wire == v1::WIRE_FORMAT_F32) CopyToLittleEndian(values, bytes.data());
        EXPECT_TRUE((*session)->AddChunk(static_cast<uint32_t>(i), 0, bytes).ok());
      }
      EXPECT_TRUE(t->Commit(std::move(*session)).ok());
    }
    EXPECT_TRUE(t->AwaitVersion(1, absl::Seconds(60)));
    EXPECT_EQ(t->version(), 1u);
    std::vector<float> after = t->Parameters();
    for (size_t i = 0; i < after.size(); ++i) after[i] -= before[i];  // = -(reduced gradient), rounded
    return after;
  };
  const std::vector<float> exact = run(v1::WIRE_FORMAT_F32);
  for (const auto& [wire, u] : {std::pair{v1::WIRE_FORMAT_BF16, std::ldexp(1.0, -8)},
                                std::pair{v1::WIRE_FORMAT_F16, std::ldexp(1.0, -11)}}) {
    const std::vector<float> step = run(wire);
    double worst = 0;
    for (size_t i = 0; i < step.size(); ++i) {
      const double bound = magnitude[i] / samples * (u + std::ldexp(1.0, -21)) + std::ldexp(1.0, -20);
      const double error = std::fabs(double{step[i]} - exact[i]);
      ASSERT_LE(error, bound) << v1::WireFormat_Name(wire) << " element " << i;
      worst = std::max(worst, error / (magnitude[i] / samples));
    }
    EXPECT_GT(worst, 0) << "no compression happened";
    std::printf("%s: largest error %.3g of the mean |g| (bound %.3g)\n", v1::WireFormat_Name(wire).c_str(), worst, u);
  }
  // f16 cannot carry |g| > 65504: the push is refused, nothing counted.
  auto t = NewTrainer(spec);
  v1::PushHeader h;
  h.set_worker(0);
  h.set_samples(1);
  h.set_num_elements(t->size());
  h.set_wire_format(v1::WIRE_FORMAT_F16);
  auto session = t->BeginPush(h);
  ASSERT_TRUE(session.ok());
  const std::vector<float> big(11, 1e5f);
  std::string bytes(22, '\0');
  EncodeF16(big, bytes.data());
  EXPECT_EQ((*session)->AddChunk(1, 0, bytes).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*session)->AddChunk(1, 0, std::string(3, '\0')).code(), absl::StatusCode::kInvalidArgument);
}

// A pull that names the contribution it waits on: parked when this server
// holds it, refused at once when it does not (a server restarted from a
// checkpoint taken before the push was acknowledged).
TEST(TrainerWaitTest, PullNamingALostContributionFailsAtOnce) {
  auto t = NewTrainer(SmallJob(2, 3));
  std::vector<testing::Contribution> window = MakeWindow(0, 2, t->size(), 3);
  ASSERT_TRUE(testing::Push(*t, window[0]).ok());
  std::atomic<int> calls{0};
  absl::Status got;
  const uint64_t parked = t->WaitForVersion(
      1, [&](absl::StatusOr<std::shared_ptr<const ParamSnapshot>> s) { ++calls; got = s.status(); }, 0, 0);
  EXPECT_NE(parked, 0u);  // worker 0's key 0 is here: it waits
  EXPECT_EQ(calls.load(), 0);
  const uint64_t refused = t->WaitForVersion(
      1, [&](absl::StatusOr<std::shared_ptr<const ParamSnapshot>> s) { ++calls; got = s.status(); }, 1, 0);
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

}  // namespace
}  // namespace gradacc

namespace gradacc {
namespace {

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
}  // namespace gradacc
