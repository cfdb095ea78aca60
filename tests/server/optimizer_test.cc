// Optimizer through its public interface: the update rules of SGD (plain,
// momentum, weight decay), Adam and AdamW on small vectors, tensors left out
// of a step, piecewise steps, and step counts. The bit-exact comparison with
// PyTorch is optimizer_golden_test.cc.
#include "server/optimizer.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"

namespace gradacc {
namespace {

std::unique_ptr<Optimizer> Make(const v1::OptimizerSpec& spec, uint64_t n) {
  auto o = Optimizer::Create(spec, n);
  EXPECT_TRUE(o.ok()) << o.status();
  return o.ok() ? *std::move(o) : nullptr;
}

v1::OptimizerSpec Sgd(double momentum = 0, double weight_decay = 0) {
  v1::OptimizerSpec s;
  s.set_kind(v1::OptimizerSpec::KIND_SGD);
  s.set_lr(0.1);
  s.mutable_sgd()->set_momentum(momentum);
  s.mutable_sgd()->set_weight_decay(weight_decay);
  return s;
}

v1::OptimizerSpec Adam(v1::OptimizerSpec::Kind kind, double weight_decay = 0) {
  v1::OptimizerSpec s;
  s.set_kind(kind);
  s.set_lr(0.01);
  s.mutable_adam()->set_beta1(0.9);
  s.mutable_adam()->set_beta2(0.999);
  s.mutable_adam()->set_eps(1e-8);
  s.mutable_adam()->set_weight_decay(weight_decay);
  return s;
}

TEST(OptimizerTest, PlainSgdSubtractsLrTimesGradient) {
  auto opt = Make(Sgd(), 3);
  std::vector<float> p = {1.0f, -2.0f, 0.5f};
  const std::vector<float> g = {0.5f, 1.0f, -4.0f};
  opt->Step(absl::MakeSpan(p), g, 0.1);
  EXPECT_FLOAT_EQ(p[0], 1.0f - 0.05f);
  EXPECT_FLOAT_EQ(p[1], -2.0f - 0.1f);
  EXPECT_FLOAT_EQ(p[2], 0.5f + 0.4f);
  EXPECT_EQ(opt->steps(), 1u);
  EXPECT_TRUE(opt->StateBuffers().empty());  // no momentum, no state
}

TEST(OptimizerTest, SgdMomentumAndWeightDecayFollowTorch) {
  auto opt = Make(Sgd(/*momentum=*/0.9, /*weight_decay=*/0.5), 1);
  std::vector<float> p = {2.0f};
  const std::vector<float> g = {1.0f};
  // Step 1: d = g + wd * p = 2; buf = d; p = 2 - 0.1 * 2 = 1.8.
  opt->Step(absl::MakeSpan(p), g, 0.1);
  EXPECT_FLOAT_EQ(p[0], 1.8f);
  // Step 2: d = 1 + 0.9 = 1.9; buf = 0.9 * 2 + 1.9 = 3.7; p = 1.8 - 0.37.
  opt->Step(absl::MakeSpan(p), g, 0.1);
  EXPECT_NEAR(p[0], 1.43f, 1e-6);
  const auto buffers = opt->StateBuffers();
  ASSERT_EQ(buffers.size(), 1u);
  EXPECT_EQ(buffers[0].first, "momentum_buffer");
  EXPECT_NEAR((*buffers[0].second)[0], 3.7f, 1e-6);
}

TEST(OptimizerTest, AdamFirstStepMovesEachParameterByAboutLr) {
  auto opt = Make(Adam(v1::OptimizerSpec::KIND_ADAM), 3);
  std::vector<float> p = {0.0f, 1.0f, -1.0f};
  const std::vector<float> g = {3.0f, -0.001f, 100.0f};
  opt->Step(absl::MakeSpan(p), g, 0.01);
  // m_hat / sqrt(v_hat) = sign(g) on the first step.
  EXPECT_NEAR(p[0], -0.01f, 1e-6);
  EXPECT_NEAR(p[1], 1.01f, 1e-5);
  EXPECT_NEAR(p[2], -1.01f, 1e-6);
  EXPECT_EQ(opt->StateBuffers().size(), 2u);  // exp_avg, exp_avg_sq
}

TEST(OptimizerTest, AdamwDecaysTheParametersApartFromTheGradient) {
  auto adamw = Make(Adam(v1::OptimizerSpec::KIND_ADAMW, /*weight_decay=*/0.1), 2);
  std::vector<float> p = {2.0f, -4.0f};
  const std::vector<float> zero = {0.0f, 0.0f};
  adamw->Step(absl::MakeSpan(p), zero, 0.01);
  // No gradient: only the decoupled decay p *= 1 - lr * wd.
  EXPECT_FLOAT_EQ(p[0], 2.0f * (1 - 0.001f));
  EXPECT_FLOAT_EQ(p[1], -4.0f * (1 - 0.001f));
  // Adam's weight decay goes through the gradient instead: with a zero
  // gradient it still moves the parameter by about lr.
  auto adam = Make(Adam(v1::OptimizerSpec::KIND_ADAM, /*weight_decay=*/0.1), 2);
  std::vector<float> q = {2.0f, -4.0f};
  adam->Step(absl::MakeSpan(q), zero, 0.01);
  EXPECT_NEAR(q[0], 1.99f, 1e-5);
  EXPECT_NEAR(q[1], -3.99f, 1e-5);
}

TEST(OptimizerTest, TensorLeftOutOfAStepKeepsItsValuesAndStepCount) {
  auto opt = Make(Sgd(/*momentum=*/0.9), 4);
  opt->SetTensors({0, 2, 4});
  ASSERT_EQ(opt->num_tensors(), 2u);
  std::vector<float> p = {1, 1, 1, 1};
  const std::vector<float> g = {1, 1, 1, 1};
  const std::vector<bool> stepped = {true, false};
  opt->Step(absl::MakeSpan(p), g, 0.1, kParallelMinElements, &stepped);
  EXPECT_FLOAT_EQ(p[0], 0.9f);
  EXPECT_FLOAT_EQ(p[1], 0.9f);
  EXPECT_EQ(p[2], 1.0f);
  EXPECT_EQ(p[3], 1.0f);
  EXPECT_EQ(opt->steps(), 1u);
  EXPECT_EQ(opt->tensor_steps(), (std::vector<uint64_t>{1, 0}));
  // Its first step later initialises its momentum as a first step does.
  opt->Step(absl::MakeSpan(p), g, 0.1);
  EXPECT_NEAR(p[2], 0.9f, 1e-7);
  EXPECT_EQ(opt->tensor_steps(), (std::vector<uint64_t>{2, 1}));
}

TEST(OptimizerTest, PiecewiseStepGivesTheBitsOfOneStep) {
  const size_t n = 1000;
  std::vector<float> g(n), a(n), b(n);
  for (size_t i = 0; i < n; ++i) {
    g[i] = std::sin(0.37f * i) * 3;
    a[i] = b[i] = std::cos(0.11f * i);
  }
  auto whole = Make(Adam(v1::OptimizerSpec::KIND_ADAMW, 0.01), n);
  auto pieces = Make(Adam(v1::OptimizerSpec::KIND_ADAMW, 0.01), n);
  for (int step = 0; step < 3; ++step) {
    whole->Step(absl::MakeSpan(a), g, 0.01);
    Optimizer::Piece piece = pieces->Prepare(absl::MakeSpan(b), 0.01);
    piece(600, n, g.data() + 600);  // any order, disjoint ranges
    piece(0, 600, g.data());
  }
  EXPECT_EQ(std::memcmp(a.data(), b.data(), n * sizeof(float)), 0);
  EXPECT_EQ(pieces->steps(), 3u);
}

TEST(OptimizerTest, RestoredStepCountsAreChecked) {
  auto opt = Make(Sgd(), 4);
  opt->SetTensors({0, 1, 4});
  opt->set_steps(5);
  EXPECT_EQ(opt->tensor_steps(), (std::vector<uint64_t>{5, 5}));
  EXPECT_TRUE(opt->set_tensor_steps({5, 3}).ok());
  EXPECT_EQ(opt->tensor_steps(), (std::vector<uint64_t>{5, 3}));
  EXPECT_EQ(opt->set_tensor_steps({5}).code(), absl::StatusCode::kDataLoss);     // one tensor short
  EXPECT_EQ(opt->set_tensor_steps({6, 1}).code(), absl::StatusCode::kDataLoss);  // more than the windows
  v1::OptimizerSpec unknown;
  unknown.set_kind(static_cast<v1::OptimizerSpec::Kind>(99));
  EXPECT_EQ(Optimizer::Create(unknown, 4).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gradacc
