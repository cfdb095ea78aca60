// Unit tests of Reducer and StepExecutor: the same bits whatever the piece
// size, thread count or shard split, the fused pass equal to reduce-then-
// step, and a sharded clipped step equal to one server's (with an in-process
// norm exchange).
#include "server/reducer.h"

#include <map>
#include <random>
#include <thread>

#include "common/mutex.h"
#include "gtest/gtest.h"
#include "server/step_executor.h"
#include "tests/test_util.h"

namespace gradacc {
namespace {

v1::JobSpec Job(double max_norm) {
  v1::JobSpec spec;
  for (auto [name, n] : {std::pair{"a", 70001}, {"b", 13}, {"c", 4099}}) {
    auto* t = spec.mutable_model()->add_tensors();
    t->set_name(name);
    t->add_shape(n);
  }
  spec.mutable_optimizer()->set_kind(v1::OptimizerSpec::KIND_ADAM);
  spec.mutable_optimizer()->set_lr(0.01);
  spec.mutable_clipping()->set_max_norm(max_norm);
  spec.mutable_window()->set_num_workers(3);
  spec.set_total_steps(10);
  EXPECT_TRUE(NormalizeJobSpec(spec).ok());
  return spec;
}

std::vector<std::vector<float>> Sources(size_t n, int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mantissa(-1, 1);
  std::uniform_int_distribution<int> exponent(-10, 10);
  std::vector<std::vector<float>> out(count, std::vector<float>(n));
  for (auto& s : out) {
    for (float& v : s) v = std::ldexp(mantissa(rng), exponent(rng));
  }
  return out;
}

TEST(ReducerTest, SumAndNormsDoNotDependOnThreadsOrPieces) {
  const v1::JobSpec spec = Job(0);
  const ModelLayout layout = *ModelLayout::FromSpec(spec.model());
  const size_t n = layout.num_elements();
  const auto src = Sources(n, 3, 1);
  std::vector<const float*> ptrs = {src[0].data(), src[1].data(), src[2].data()};
  const Reducer one(&layout, {0, n}, ReducerOptions{});
  const Reducer many(&layout, {0, n}, ReducerOptions{/*piece_elements=*/1000, /*parallel_min_elements=*/64});
  std::vector<float> a(n), b(n);
  one.Sum(absl::MakeSpan(a), ptrs, 7.0f);
  many.Sum(absl::MakeSpan(b), ptrs, 7.0f);
  EXPECT_TRUE(testing::BitIdentical(a, b));
  const NormPart pa = one.TensorNorms(a, nullptr);
  const NormPart pb = many.TensorNorms(b, nullptr);
  EXPECT_TRUE(testing::BitIdentical(pa.finished, pb.finished));
  EXPECT_EQ(pa.finished[1], TorchSumOfSquares(absl::MakeConstSpan(a.data() + 70001, 13)));
  // A split range: the first shard passes its state on to the second.
  const auto [b0, e0] = std::pair<uint64_t, uint64_t>{0, 50000};
  const Reducer first(&layout, {b0, e0}, ReducerOptions{});
  const Reducer second(&layout, {e0, n}, ReducerOptions{});
  EXPECT_FALSE(first.StartsMidTensor());
  EXPECT_TRUE(second.StartsMidTensor());
  const NormPart p0 = first.TensorNorms(absl::MakeConstSpan(a.data(), e0), nullptr);
  ASSERT_TRUE(p0.carry_tensor.has_value());
  EXPECT_EQ(*p0.carry_tensor, 0u);
  const NormPart p1 = second.TensorNorms(absl::MakeConstSpan(a.data() + e0, n - e0), &p0.carry);
  for (size_t t = 0; t < 3; ++t) EXPECT_EQ(p0.finished[t] + p1.finished[t], pa.finished[t]) << "tensor " << t;
}

TEST(ReducerTest, FusedPassEqualsReduceThenStep) {
  const v1::JobSpec spec = Job(0);
  const ModelLayout layout = *ModelLayout::FromSpec(spec.model());
  const size_t n = layout.num_elements();
  const auto src = Sources(n, 3, 2);
  std::vector<const float*> ptrs = {src[0].data(), src[1].data(), src[2].data()};
  for (const ReducerOptions options : {ReducerOptions{}, ReducerOptions{777, 64}}) {
    const Reducer reducer(&layout, {0, n}, options);
    auto opt_a = *Optimizer::Create(spec.optimizer(), n);
    auto opt_b = *Optimizer::Create(spec.optimizer(), n);
    std::vector<float> pa = src[0], pb = src[0], acc(n);
    reducer.Sum(absl::MakeSpan(acc), ptrs, 9.0f);
    opt_a->Step(absl::MakeSpan(pa), acc, 0.01, options.parallel_min_elements);
    const Reducer::FusedSums sums = reducer.Fused(ptrs, 9.0f, opt_b->Prepare(absl::MakeSpan(pb), 0.01));
    EXPECT_TRUE(testing::BitIdentical(pa, pb)) << "piece " << options.piece_elements;
    EXPECT_GT(sums.tensors[0], 0);
    EXPECT_EQ(sums.sources.size(), 3u);
  }
}

// Two shards in one process: each publishes its part and reads the other's.
class FakeExchange : public NormExchange {
 public:
  FakeExchange(std::map<std::pair<uint32_t, uint64_t>, NormPart>* board, gradacc::Mutex* mu, uint32_t shard,
               uint32_t shards)
      : board_(board), mu_(mu), shard_(shard), shards_(shards) {}
  absl::StatusOr<TorchNormState> CarryIn(uint64_t window) override {
    gradacc::MutexLock lock(mu_);
    auto ready = std::make_pair(board_, std::make_pair(shard_ - 1, window));
    mu_->Await(gradacc::Condition(+[](decltype(ready)* a) { return a->first->count(a->second) > 0; }, &ready));
    return board_->at(ready.second).carry;
  }
  absl::StatusOr<NormTotals> Exchange(uint64_t window, const NormPart& local) override {
    gradacc::MutexLock lock(mu_);
    (*board_)[{shard_, window}] = local;
    NormTotals totals;
    std::vector<float>& total = totals.sums;
    total.assign(local.finished.size(), 0.0f);
    for (uint32_t s = 0; s < shards_; ++s) {
      const auto key = std::make_pair(s, window);
      auto ready = std::make_pair(board_, key);
      mu_->Await(gradacc::Condition(+[](decltype(ready)* a) { return a->first->count(a->second) > 0; }, &ready));
      for (size_t t = 0; t < total.size(); ++t) total[t] += board_->at(key).finished[t];
      totals.found_inf |= board_->at(key).found_inf;
    }
    return totals;
  }

 private:
  std::map<std::pair<uint32_t, uint64_t>, NormPart>* board_;
  gradacc::Mutex* mu_;
  const uint32_t shard_, shards_;
};

TEST(StepExecutorTest, ShardedClippedStepEqualsOneServer) {
  const v1::JobSpec spec = Job(/*max_norm=*/0.5);
  const ModelLayout layout = *ModelLayout::FromSpec(spec.model());
  const uint64_t n = layout.num_elements();
  auto run = [&](uint32_t shards) {
    std::vector<float> params(n);
    std::map<std::pair<uint32_t, uint64_t>, NormPart> board;
    gradacc::Mutex mu;
    std::vector<std::thread> threads;
    for (uint32_t s = 0; s < shards; ++s) {
      threads.emplace_back([&, s] {
        const auto [begin, end] = ShardRange(layout, s, shards);
        FloatBuffer part(end - begin);
        StepExecutor executor(&spec, &layout, {begin, end}, shards, std::move(part),
                              *Optimizer::Create(spec.optimizer(), end - begin), ReducerOptions{});
        FakeExchange exchange(&board, &mu, s, shards);
        for (uint64_t w = 0; w < 3; ++w) {
          const auto src = Sources(n, 2, 10 + static_cast<uint32_t>(w));
          ClosingWindow window;
          window.window = w;
          for (const auto& g : src) {
            Slot slot;
            slot.grad = FloatBuffer(end - begin);
            std::copy(g.begin() + begin, g.begin() + end, slot.grad.data());
            slot.samples = 5;
            window.slots.push_back(std::move(slot));
          }
          auto report = executor.Run(window, shards > 1 ? &exchange : nullptr, [] {});
          ASSERT_TRUE(report.ok()) << report.status();
          EXPECT_LT(report->clipped_norm, report->grad_norm) << "the test must clip";
        }
        const std::vector<float> p = executor.Parameters();
        std::copy(p.begin(), p.end(), params.begin() + begin);
      });
    }
    for (auto& t : threads) t.join();
    return params;
  };
  const std::vector<float> one = run(1);
  EXPECT_TRUE(testing::BitIdentical(run(2), one));
  EXPECT_TRUE(testing::BitIdentical(run(3), one));
}

// Loss scaling: pushes of S * g (S a power of two, as GradScaler's scales
// are) unscale to exactly g, so a loss-scaled run equals the plain run that
// leaves out the windows with an overflow — on 1, 2 and 3 shards, where the
// overflow lies in one shard's part only and every shard skips. The scale
// follows GradScaler's rules: backoff on an overflow, growth after
// growth_interval clean windows.
TEST(StepExecutorTest, LossScalingUnscalesAndSkipsOverflowsOnEveryShard) {
  v1::JobSpec plain = Job(/*max_norm=*/0);
  v1::JobSpec scaled = plain;
  scaled.mutable_loss_scaling()->set_init_scale(1024);
  scaled.mutable_loss_scaling()->set_growth_interval(2);
  ASSERT_TRUE(NormalizeJobSpec(scaled).ok());
  const ModelLayout layout = *ModelLayout::FromSpec(plain.model());
  const uint64_t n = layout.num_elements();
  const uint64_t overflow_at = n - 5;  // in tensor c: the last shard's part
  constexpr uint64_t kWindows = 6;
  const std::vector<bool> overflows = {false, true, false, false, true, false};
  // GradScaler's rules by hand: 1024 -> (clean) 1024, t1 -> (inf) 512 ->
  // 512, t1 -> 1024, t0 (growth) -> (inf) 512 -> 512, t1.
  const std::vector<float> want_scales = {1024, 1024, 512, 512, 1024, 512, 512};
  auto run = [&](const v1::JobSpec& spec, uint32_t shards, std::vector<std::vector<float>>* scales,
                 std::vector<std::vector<bool>>* skipped) {
    std::vector<float> params(n);
    std::map<std::pair<uint32_t, uint64_t>, NormPart> board;
    gradacc::Mutex mu;
    std::vector<std::thread> threads;
    scales->assign(shards, {});
    skipped->assign(shards, {});
    for (uint32_t s = 0; s < shards; ++s) {
      threads.emplace_back([&, s] {
        const auto [begin, end] = ShardRange(layout, s, shards);
        StepExecutor executor(&spec, &layout, {begin, end}, shards, FloatBuffer(end - begin),
                              *Optimizer::Create(spec.optimizer(), end - begin), ReducerOptions{});
        FakeExchange exchange(&board, &mu, s, shards);
        (*scales)[s].push_back(executor.loss_scaler().scale());
        uint64_t exchanged = 0;
        for (uint64_t w = 0; w < kWindows; ++w) {
          const bool plain_run = !spec.has_loss_scaling();
          if (plain_run && overflows[w]) continue;  // the plain run leaves the window out
          const float scale = executor.loss_scaler().scale();
          const auto src = Sources(n, 2, 40 + static_cast<uint32_t>(w));
          ClosingWindow window;
          window.window = plain_run ? exchanged : w;
          for (size_t k = 0; k < src.size(); ++k) {
            Slot slot;
            slot.grad = FloatBuffer(end - begin);
            for (uint64_t i = begin; i < end; ++i) slot.grad[i - begin] = plain_run ? src[k][i] : src[k][i] * scale;
            if (!plain_run && overflows[w] && k == 1 && overflow_at >= begin && overflow_at < end) {
              slot.grad[overflow_at - begin] = std::numeric_limits<float>::infinity();
            }
            slot.samples = 5;
            window.slots.push_back(std::move(slot));
          }
          ++exchanged;
          auto report = executor.Run(window, shards > 1 ? &exchange : nullptr, [] {});
          ASSERT_TRUE(report.ok()) << report.status();
          if (!plain_run) {
            EXPECT_EQ(report->loss_scale, scale);
            EXPECT_EQ(report->next_loss_scale, executor.loss_scaler().scale());
          }
          (*skipped)[s].push_back(report->skipped);
          (*scales)[s].push_back(executor.loss_scaler().scale());
        }
        const std::vector<float> p = executor.Parameters();
        std::copy(p.begin(), p.end(), params.begin() + begin);
      });
    }
    for (auto& t : threads) t.join();
    return params;
  };
  std::vector<std::vector<float>> scales;
  std::vector<std::vector<bool>> skipped;
  const std::vector<float> want = run(plain, 1, &scales, &skipped);
  for (uint32_t shards : {1u, 2u, 3u}) {
    SCOPED_TRACE(shards);
    const std::vector<float> got = run(scaled, shards, &scales, &skipped);
    EXPECT_TRUE(testing::BitIdentical(got, want));
    for (uint32_t s = 0; s < shards; ++s) {
      EXPECT_EQ(scales[s], want_scales) << "shard " << s;
      EXPECT_EQ(skipped[s], overflows) << "shard " << s;
    }
  }
}

TEST(LossScalerTest, GrowthThatOverflowsIsNotTaken) {
  v1::JobSpec spec;
  spec.mutable_loss_scaling()->set_init_scale(3e38);
  spec.mutable_loss_scaling()->set_growth_factor(2);
  spec.mutable_loss_scaling()->set_backoff_factor(0.3);
  spec.mutable_loss_scaling()->set_growth_interval(1);
  LossScaler scaler(spec);
  scaler.Update(false);
  EXPECT_EQ(scaler.scale(), 3e38f) << "f32(6e38) is Inf: torch keeps the old scale";
  EXPECT_EQ(scaler.growth_tracker(), 0u);
  scaler.Update(true);
  EXPECT_EQ(scaler.scale(), static_cast<float>(static_cast<double>(3e38f) * 0.3)) << "f32(f64(S) * backoff)";
  EXPECT_EQ(scaler.inverse(), static_cast<float>(1.0 / static_cast<double>(scaler.scale())));
  v1::CheckpointState state;
  *state.mutable_loss_scale() = scaler.Export();
  LossScaler resumed(spec);
  resumed.Restore(state);
  EXPECT_EQ(resumed.scale(), scaler.scale());
  v1::CheckpointState old_release;  // no loss_scale: the initial scale stands
  LossScaler fresh(spec);
  fresh.Restore(old_release);
  EXPECT_EQ(fresh.scale(), 3e38f);
}

// Tensors left out of a step (no contribution touched them) keep their
// values and state, and their own step count: two tensors stepped through
// one masked optimizer end bit-identical to each tensor stepped by an
// optimizer of its own, only in the windows that touched it — the
// single-tensor optimizers being what the golden tests hold to torch.
TEST(OptimizerTest, MaskedStepsEqualPerTensorOptimizers) {
  std::vector<v1::OptimizerSpec> specs(4);
  specs[0].set_kind(v1::OptimizerSpec::KIND_SGD);
  specs[0].mutable_sgd()->set_momentum(0.9);
  specs[0].mutable_sgd()->set_weight_decay(0.01);
  specs[1] = specs[0];
  specs[1].mutable_sgd()->set_nesterov(true);
  specs[2].set_kind(v1::OptimizerSpec::KIND_ADAMW);
  specs[2].mutable_adam()->set_weight_decay(0.1);
  specs[3].set_kind(v1::OptimizerSpec::KIND_ADAM);
  specs[3].mutable_adam()->set_amsgrad(true);
  specs[3].mutable_adam()->set_weight_decay(0.01);
  constexpr size_t kA = 1000, kB = 37;
  // Which tensors each of 6 steps touches: both, A, B, A, none, both.
  const std::vector<std::vector<bool>> masks = {{true, true}, {true, false}, {false, true},
                                                {true, false}, {false, false}, {true, true}};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (v1::OptimizerSpec& spec : specs) {
    spec.set_lr(0.01);
    if (spec.has_adam()) {
      spec.mutable_adam()->set_beta1(0.9);
      spec.mutable_adam()->set_beta2(0.999);
      spec.mutable_adam()->set_eps(1e-8);
    }
    SCOPED_TRACE(spec.ShortDebugString());
    auto both = *Optimizer::Create(spec, kA + kB);
    both->SetTensors({0, kA, kA + kB});
    auto only_a = *Optimizer::Create(spec, kA);
    auto only_b = *Optimizer::Create(spec, kB);
    std::vector<float> p(kA + kB);
    for (float& x : p) x = normal(rng);
    std::vector<float> pa(p.begin(), p.begin() + kA), pb(p.begin() + kA, p.end());
    for (const std::vector<bool>& mask : masks) {
      std::vector<float> g(kA + kB);
      for (float& x : g) x = normal(rng);
      both->Step(absl::MakeSpan(p), g, 0.01, /*min_per_thread=*/100, &mask);
      if (mask[0]) only_a->Step(absl::MakeSpan(pa), absl::MakeConstSpan(g.data(), kA), 0.01);
      if (mask[1]) only_b->Step(absl::MakeSpan(pb), absl::MakeConstSpan(g.data() + kA, kB), 0.01);
    }
    EXPECT_TRUE(testing::BitIdentical(std::vector<float>(p.begin(), p.begin() + kA), pa));
    EXPECT_TRUE(testing::BitIdentical(std::vector<float>(p.begin() + kA, p.end()), pb));
    EXPECT_EQ(both->steps(), 6u);
    EXPECT_EQ(both->tensor_steps(), (std::vector<uint64_t>{4, 3}));
    EXPECT_EQ(only_a->steps(), 4u);
    EXPECT_EQ(only_b->steps(), 3u);
    auto sa = only_a->StateBuffers(), sb = only_b->StateBuffers(), s = both->StateBuffers();
    ASSERT_EQ(s.size(), sa.size());
    for (size_t i = 0; i < s.size(); ++i) {
      const float* all = s[i].second->data();
      EXPECT_TRUE(testing::BitIdentical(std::vector<float>(all, all + kA),
                                        std::vector<float>(sa[i].second->data(), sa[i].second->data() + kA)))
          << s[i].first;
      EXPECT_TRUE(testing::BitIdentical(std::vector<float>(all + kA, all + kA + kB),
                                        std::vector<float>(sb[i].second->data(), sb[i].second->data() + kB)))
          << s[i].first;
    }
    // Restoring: a checkpoint's per-tensor counts, or (older ones) none.
    auto restored = *Optimizer::Create(spec, kA + kB);
    restored->SetTensors({0, kA, kA + kB});
    restored->set_steps(6);
    EXPECT_EQ(restored->tensor_steps(), (std::vector<uint64_t>{6, 6}));
    EXPECT_TRUE(restored->set_tensor_steps({4, 3}).ok());
    EXPECT_FALSE(restored->set_tensor_steps({4}).ok());
    EXPECT_FALSE(restored->set_tensor_steps({7, 3}).ok());
  }
}

}  // namespace
}  // namespace gradacc
