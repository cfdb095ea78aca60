// Unit tests of StepExecutor, the step of one closed window: the mean over
// the window's samples in worker order, the norm it reports, clipping as
// clip_grad_norm_ does, tensors no contribution touched left alone, and the
// hook that runs once before the parameters change.
#include "server/step_executor.h"

#include <cmath>
#include <vector>

#include "common/job_spec.h"
#include "gtest/gtest.h"
#include "server/optimizer.h"

namespace gradacc {
namespace {

class StepExecutorTest : public ::testing::Test {
 protected:
  // a: 4 elements, b: 2; plain SGD at lr 0.5; 2 workers.
  std::unique_ptr<StepExecutor> Make(double max_norm) {
    spec_.set_job_id("step");
    spec_.mutable_model()->add_tensors()->set_name("a");
    spec_.mutable_model()->mutable_tensors(0)->add_shape(4);
    spec_.mutable_model()->add_tensors()->set_name("b");
    spec_.mutable_model()->mutable_tensors(1)->add_shape(2);
    spec_.mutable_optimizer()->set_kind(v1::OptimizerSpec::KIND_SGD);
    spec_.mutable_optimizer()->set_lr(0.5);
    spec_.mutable_window()->set_num_workers(2);
    spec_.set_total_steps(3);
    if (max_norm > 0) spec_.mutable_clipping()->set_max_norm(max_norm);
    EXPECT_TRUE(NormalizeJobSpec(spec_).ok());
    layout_ = *ModelLayout::FromSpec(spec_.model());
    auto optimizer = Optimizer::Create(spec_.optimizer(), 6);
    EXPECT_TRUE(optimizer.ok()) << optimizer.status();
    (*optimizer)->SetTensors({0, 4, 6});  // as the Trainer does: a step count per tensor
    FloatBuffer params(6);
    for (int i = 0; i < 6; ++i) params.data()[i] = 1.0f;
    return std::make_unique<StepExecutor>(&spec_, &layout_, FlatRange{0, 6}, 1, std::move(params),
                                          *std::move(optimizer), ReducerOptions());
  }

  static Slot SlotOf(const std::vector<float>& g, uint64_t samples, std::vector<uint32_t> untouched = {}) {
    Slot s;
    s.grad = FloatBuffer(g.size());
    std::copy(g.begin(), g.end(), s.grad.data());
    s.samples = samples;
    s.micro_batches = 1;
    s.loss_sum = static_cast<double>(samples);
    s.untouched = std::move(untouched);
    return s;
  }

  // Slot is move-only: no initializer list.
  static ClosingWindow WindowOf(Slot first, Slot second) {
    ClosingWindow w;
    w.window = 0;
    w.slots.push_back(std::move(first));
    w.slots.push_back(std::move(second));
    w.workers = {0, 1};
    return w;
  }

  v1::JobSpec spec_;
  ModelLayout layout_;
};

TEST_F(StepExecutorTest, TheMeanOverSamplesSteppedOnce) {
  auto step = Make(/*max_norm=*/0);
  const std::vector<float> g0 = {1, 2, 3, 4, 5, 6}, g1 = {3, 2, 1, 0, -1, -2};
  ClosingWindow w = WindowOf(SlotOf(g0, 1), SlotOf(g1, 3));
  int hooks = 0;
  auto report = step->Run(w, nullptr, [&] { ++hooks; });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(hooks, 1);
  EXPECT_EQ(report->samples, 4u);
  EXPECT_DOUBLE_EQ(report->loss_sum, 4.0);
  EXPECT_FALSE(report->skipped);
  EXPECT_TRUE(report->unstepped.empty());
  const std::vector<float> p = step->Parameters();
  double norm = 0;
  for (int i = 0; i < 6; ++i) {
    const float mean = (g0[i] + g1[i]) / 4.0f;
    norm += static_cast<double>(mean) * mean;
    EXPECT_FLOAT_EQ(p[i], 1.0f - 0.5f * mean) << i;
  }
  EXPECT_NEAR(report->grad_norm, std::sqrt(norm), 1e-5);
  EXPECT_EQ(step->optimizer_steps(), 1u);
}

TEST_F(StepExecutorTest, ClippingScalesToTheMaxNorm) {
  auto step = Make(/*max_norm=*/0.1);
  const std::vector<float> g = {3, 0, 0, 4, 0, 0};  // norm 5 with 1 sample
  ClosingWindow w = WindowOf(SlotOf(g, 1), SlotOf({0, 0, 0, 0, 0, 0}, 0));
  auto report = step->Run(w, nullptr, [] {});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_NEAR(report->grad_norm, 5.0, 1e-6);
  EXPECT_NEAR(report->clipped_norm, 0.1, 1e-6);
  const std::vector<float> p = step->Parameters();
  EXPECT_NEAR(p[0], 1.0 - 0.5 * 3 * 0.1 / 5, 1e-6);
  EXPECT_NEAR(p[3], 1.0 - 0.5 * 4 * 0.1 / 5, 1e-6);
  EXPECT_FLOAT_EQ(p[1], 1.0f);
}

TEST_F(StepExecutorTest, TensorsNoContributionTouchedAreLeftAlone) {
  auto step = Make(/*max_norm=*/0);
  ClosingWindow w = WindowOf(SlotOf({1, 1, 1, 1, 0, 0}, 1, {1}), SlotOf({1, 1, 1, 1, 0, 0}, 1, {1}));
  auto report = step->Run(w, nullptr, [] {});
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->unstepped, std::vector<uint32_t>{1});
  const std::vector<float> p = step->Parameters();
  EXPECT_FLOAT_EQ(p[0], 0.5f);
  EXPECT_EQ(p[4], 1.0f);
  EXPECT_EQ(p[5], 1.0f);
  EXPECT_EQ(step->tensor_steps(), (std::vector<uint64_t>{1, 0}));
}

}  // namespace
}  // namespace gradacc
