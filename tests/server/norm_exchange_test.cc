// NormExchange: the contract between a shard's step (StepExecutor) and the
// exchange that agrees on the global norm — a shard that starts inside a
// tensor asks for the carry first, each shard publishes the part it
// finished, the totals it gets back decide the clipping, and a cancelled
// exchange abandons the step — and the interface's defaults.
#include "server/norm_exchange.h"

#include <cmath>
#include <vector>

#include "common/job_spec.h"
#include "common/torch_norm.h"
#include "gtest/gtest.h"
#include "server/step_executor.h"
#include "tests/test_util.h"

namespace gradacc {
namespace {

// a: 10000 elements (split between the two shards), b: 13.
v1::JobSpec Job() {
  v1::JobSpec spec;
  for (auto [name, n] : {std::pair{"a", 10000}, {"b", 13}}) {
    auto* t = spec.mutable_model()->add_tensors();
    t->set_name(name);
    t->add_shape(n);
  }
  spec.mutable_optimizer()->set_kind(v1::OptimizerSpec::KIND_SGD);
  spec.mutable_optimizer()->set_lr(0.1);
  spec.mutable_clipping()->set_max_norm(1.0);
  spec.mutable_window()->set_num_workers(1);
  spec.set_total_steps(10);
  EXPECT_TRUE(NormalizeJobSpec(spec).ok());
  return spec;
}

// Records what the step asks; answers as scripted.
class ScriptedExchange final : public NormExchange {
 public:
  absl::StatusOr<TorchNormState> CarryIn(uint64_t window) override {
    calls.push_back("carry " + std::to_string(window));
    return TorchNormState();
  }
  absl::StatusOr<NormTotals> Exchange(uint64_t window, const NormPart& local) override {
    calls.push_back("exchange " + std::to_string(window));
    published = local;
    if (!answer.ok()) return answer.status();
    return *answer;
  }
  std::vector<std::string> calls;
  NormPart published;
  absl::StatusOr<NormTotals> answer = NormTotals{{0.25f, 0.0f}, false};
};

class NormExchangeTest : public ::testing::Test {
 protected:
  NormExchangeTest() : spec_(Job()), layout_(*ModelLayout::FromSpec(spec_.model())) {}

  // Shard `shard` of 2 (or the whole model with `shards` 1), parameters 1.
  std::unique_ptr<StepExecutor> Executor(uint32_t shard, uint32_t shards = 2) {
    const auto [begin, end] = ShardRange(layout_, shard, shards);
    FloatBuffer params(end - begin);
    for (size_t i = 0; i < params.size(); ++i) params.data()[i] = 1.0f;
    return std::make_unique<StepExecutor>(&spec_, &layout_, FlatRange{begin, end}, shards, std::move(params),
                                          *Optimizer::Create(spec_.optimizer(), end - begin), ReducerOptions{});
  }
  // A window of one contribution, gradient 0.5 everywhere in the shard.
  ClosingWindow Window(uint32_t shard, uint32_t shards = 2) {
    const auto [begin, end] = ShardRange(layout_, shard, shards);
    ClosingWindow window;
    window.window = 4;
    Slot slot;
    slot.grad = FloatBuffer(end - begin);
    for (size_t i = 0; i < slot.grad.size(); ++i) slot.grad.data()[i] = 0.5f;
    slot.samples = 1;
    window.slots.push_back(std::move(slot));
    return window;
  }

  const v1::JobSpec spec_;
  const ModelLayout layout_;
};

TEST_F(NormExchangeTest, ShardStartingInsideATensorAsksForTheCarryThenPublishesWhatItFinished) {
  auto executor = Executor(1);
  ScriptedExchange exchange;
  ClosingWindow window = Window(1);
  ASSERT_TRUE(executor->Run(window, &exchange, [] {}).ok());
  EXPECT_EQ(exchange.calls, (std::vector<std::string>{"carry 4", "exchange 4"}));
  // Per model tensor; shard 1 holds the end of a and all of b: it finishes both.
  ASSERT_EQ(exchange.published.finished.size(), 2u);
  EXPECT_GT(exchange.published.finished[0], 0.0f);
  EXPECT_FLOAT_EQ(exchange.published.finished[1], 13 * 0.25f);
  EXPECT_FALSE(exchange.published.carry_tensor.has_value());
}

TEST_F(NormExchangeTest, FirstShardPassesTheSplitTensorOnAndAsksNoCarry) {
  auto executor = Executor(0);
  ScriptedExchange exchange;
  ClosingWindow window = Window(0);
  ASSERT_TRUE(executor->Run(window, &exchange, [] {}).ok());
  EXPECT_EQ(exchange.calls, (std::vector<std::string>{"exchange 4"}));
  ASSERT_TRUE(exchange.published.carry_tensor.has_value());
  EXPECT_EQ(*exchange.published.carry_tensor, 0u);
  // Nothing finished here: a continues on shard 1, b is not here.
  EXPECT_EQ(exchange.published.finished, (std::vector<float>{0.0f, 0.0f}));
}

TEST_F(NormExchangeTest, TotalsFromTheExchangeDecideTheNormAndTheClipping) {
  // Global norm sqrt(0.25) = 0.5 < max_norm 1: no clipping.
  auto small = Executor(0);
  ScriptedExchange quiet;
  ClosingWindow w1 = Window(0);
  auto r1 = small->Run(w1, &quiet, [] {});
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_FLOAT_EQ(r1->grad_norm, TorchTotalNorm(std::vector<float>{0.25f, 0.0f}));
  EXPECT_EQ(r1->clipped_norm, r1->grad_norm);
  EXPECT_FLOAT_EQ(small->Parameters()[0], 1.0f - 0.1f * 0.5f);
  // The peers report a norm of 100: this shard's gradient is clipped by 1/100.
  auto big = Executor(0);
  ScriptedExchange loud;
  loud.answer = NormTotals{{10000.0f, 0.0f}, false};
  ClosingWindow w2 = Window(0);
  auto r2 = big->Run(w2, &loud, [] {});
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_FLOAT_EQ(r2->grad_norm, 100.0f);
  EXPECT_LE(r2->clipped_norm, 1.0f + 1e-6f);
  EXPECT_NEAR(big->Parameters()[0], 1.0f - 0.1f * 0.5f / 100, 1e-6);
}

TEST_F(NormExchangeTest, CancelledExchangeAbandonsTheStepWithNothingChanged) {
  auto executor = Executor(0);
  ScriptedExchange exchange;
  exchange.answer = absl::CancelledError("shutting down");
  ClosingWindow window = Window(0);
  const auto report = executor->Run(window, &exchange, [] {});
  EXPECT_EQ(report.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(executor->optimizer_steps(), 0u);
  for (float p : executor->Parameters()) ASSERT_EQ(p, 1.0f);
}

TEST_F(NormExchangeTest, UnshardedStepNeverAsksTheExchange) {
  auto executor = Executor(0, /*shards=*/1);
  ScriptedExchange exchange;
  ClosingWindow window = Window(0, 1);
  ASSERT_TRUE(executor->Run(window, &exchange, [] {}).ok());
  EXPECT_TRUE(exchange.calls.empty());
}

TEST_F(NormExchangeTest, PublishedAndRestoreDefaultToNothingKept) {
  ScriptedExchange exchange;
  NormExchange& base = exchange;
  base.Restore(3, v1::GetNormPartialResponse());
  EXPECT_FALSE(base.Published(3).has_value());
}

}  // namespace
}  // namespace gradacc
