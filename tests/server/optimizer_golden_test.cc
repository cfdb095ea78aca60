// Replays PyTorch trajectories (tests/golden/optimizer_golden.json, made by
// gen_optimizer_golden.py with torch.optim) through the Trainer: every
// optimizer, clipping, schedule and reduction must follow torch to within
// 1e-6 relative error on every parameter after every window.
#include <openssl/sha.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "golden/golden.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace gradacc {
namespace {

test::GoldenSet LoadGolden() {
  std::ifstream in(GRADACC_GOLDEN_JSON);
  std::stringstream ss;
  ss << in.rdbuf();
  test::GoldenSet set;
  auto status = google::protobuf::util::JsonStringToMessage(ss.str(), &set);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return set;
}

class OptimizerGoldenTest : public ::testing::TestWithParam<int> {
 public:
  static const test::GoldenSet& Set() {
    static const test::GoldenSet* set = new test::GoldenSet(LoadGolden());
    return *set;
  }
};

// |a - b| <= 1e-6 * |b|, with |b| floored at 1e-3 so that values crossing
// zero are judged on an absolute 1e-9 scale.
double RelErr(float a, float b) { return std::fabs(double{a} - b) / std::max(std::fabs(double{b}), 1e-3); }

TEST_P(OptimizerGoldenTest, FollowsPyTorch) {
  const test::GoldenCase& c = Set().cases(GetParam());
  SCOPED_TRACE(c.name());
  ASSERT_GE(c.windows_size(), 20);
  FloatBuffer initial(c.initial_params_size());
  std::copy(c.initial_params().begin(), c.initial_params().end(), initial.data());
  auto trainer = Trainer::Create(c.job(), TrainerOptions(), GivenInitialParameters(std::move(initial)));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  testing::JoinAll(**trainer);
  double worst = 0;
  int exact = 0, total = 0;
  for (int w = 0; w < c.windows_size(); ++w) {
    const test::GoldenWindow& gw = c.windows(w);
    for (const test::GoldenContribution& gc : gw.contributions()) {
      testing::Contribution con;
      con.worker = gc.worker();
      con.window = w;
      con.key = w;
      con.samples = gc.samples();
      con.loss_sum = gc.loss_sum();
      con.grad.assign(gc.grad().begin(), gc.grad().end());
      auto r = testing::Push(**trainer, con);
      ASSERT_TRUE(r.ok()) << r.status();
    }
    ASSERT_EQ((*trainer)->version(), static_cast<uint64_t>(w + 1));
    EXPECT_NEAR((*trainer)->Current()->header.header().lr(), gw.lr(), 1e-12 * gw.lr()) << "window " << w;
    const std::vector<float> params = (*trainer)->Parameters();
    ASSERT_EQ(params.size(), static_cast<size_t>(gw.params_size()));
    for (size_t i = 0; i < params.size(); ++i) {
      const double e = RelErr(params[i], gw.params(i));
      worst = std::max(worst, e);
      exact += params[i] == gw.params(i);
      ++total;
      ASSERT_LE(e, 1e-6) << absl::StrFormat("window %d element %d: gradacc %.9g, torch %.9g", w, i, params[i],
                                            gw.params(i));
    }
  }
  RecordProperty("max_rel_err", absl::StrFormat("%.3g", worst));
  std::printf("%-36s max rel err %.3g, %d/%d values bit-identical to torch\n", c.name().c_str(), worst, exact, total);
}

INSTANTIATE_TEST_SUITE_P(AllCases, OptimizerGoldenTest,
                         ::testing::Range(0, OptimizerGoldenTest::Set().cases_size()),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return OptimizerGoldenTest::Set().cases(info.param).name();
                         });

TEST(OptimizerGoldenSetTest, CoversEveryConfiguration) {
  const test::GoldenSet& set = OptimizerGoldenTest::Set();
  bool sgd = false, momentum = false, dampening = false, nesterov = false, sgd_wd = false, adam = false,
       adam_wd = false, amsgrad = false, adamw = false, clip = false, step = false, cosine = false, warmup = false,
       contributions = false, sum = false;
  for (const auto& c : set.cases()) {
    const auto& o = c.job().optimizer();
    sgd |= o.kind() == v1::OptimizerSpec::KIND_SGD;
    momentum |= o.sgd().momentum() > 0;
    dampening |= o.sgd().dampening() > 0;
    nesterov |= o.sgd().nesterov();
    sgd_wd |= o.kind() == v1::OptimizerSpec::KIND_SGD && o.sgd().weight_decay() > 0;
    adam |= o.kind() == v1::OptimizerSpec::KIND_ADAM;
    adam_wd |= o.kind() == v1::OptimizerSpec::KIND_ADAM && o.adam().weight_decay() > 0;
    amsgrad |= o.adam().amsgrad();
    adamw |= o.kind() == v1::OptimizerSpec::KIND_ADAMW;
    clip |= c.job().clipping().max_norm() > 0;
    step |= c.job().schedule().kind() == v1::LrSchedule::KIND_STEP;
    cosine |= c.job().schedule().kind() == v1::LrSchedule::KIND_COSINE;
    warmup |= c.job().schedule().warmup_steps() > 0;
    contributions |= c.job().reduction() == v1::REDUCTION_MEAN_OVER_CONTRIBUTIONS;
    sum |= c.job().reduction() == v1::REDUCTION_SUM;
  }
  EXPECT_TRUE(sgd && momentum && dampening && nesterov && sgd_wd && adam && adam_wd && amsgrad && adamw && clip &&
              step && cosine && warmup && contributions && sum);
}

// Global-norm clipping on tensors of 120300, 4099 and 10 elements, against
// torch (tests/golden/clip_golden.json): bit for bit — every window's total
// norm and the final parameters (their SHA-256).
TEST(ClipGoldenTest, LargeTensorsClipBitForBitAsTorch) {
  std::ifstream in(GRADACC_CLIP_GOLDEN_JSON);
  std::stringstream ss;
  ss << in.rdbuf();
  test::ClipGolden golden;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ss.str(), &golden).ok());
  ASSERT_EQ(golden.cases_size(), 3);
  for (const test::ClipCase& c : golden.cases()) {
    SCOPED_TRACE(c.name());
    const ModelLayout layout = *ModelLayout::FromSpec(c.job().model());
    const uint64_t n = layout.num_elements();
    ASSERT_GE(layout.tensors()[0].size, 100000u);
    FloatBuffer initial(n);
    for (uint64_t j = 0; j < n; ++j) initial[j] = static_cast<float>((UniformAt(c.init_seed(), j) - 0.5) * 2);
    TrainerOptions options;
    options.reducer.parallel_min_elements = 4096;  // the multi-threaded paths too
    auto trainer = Trainer::Create(c.job(), options, GivenInitialParameters(std::move(initial)));
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    testing::JoinAll(**trainer);
    const uint32_t workers = c.job().window().num_workers();
    for (int w = 0; w < c.norm_bits_size(); ++w) {
      for (uint32_t k = 0; k < workers; ++k) {
        testing::Contribution con;
        con.worker = k;
        con.window = con.key = w;
        con.samples = 1 + (w + k) % 3;
        con.grad.resize(n);
        const uint64_t seed = c.init_seed() * 1000003 + w * 1009 + k + 1;
        for (uint64_t j = 0; j < n; ++j) {
          con.grad[j] = static_cast<float>((UniformAt(seed, j) - 0.5) * c.grad_scale() * (k + 1));
        }
        ASSERT_TRUE(testing::Push(**trainer, con, /*chunk=*/65536).ok());
      }
      const v1::GetStepsResponse steps = (*trainer)->GetSteps(w + 1, w + 1);
      ASSERT_EQ(steps.steps_size(), 1) << "the ledger has every published step";
      const v1::StepRecord& record = steps.steps(0);
      const float norm = static_cast<float>(record.grad_norm());
      uint32_t norm_bits;
      std::memcpy(&norm_bits, &norm, 4);
      EXPECT_EQ(norm_bits, c.norm_bits(w)) << "window " << w << ": gradacc " << norm;
      EXPECT_EQ(record.grad_norm_clipped() < record.grad_norm(), c.clipped(w)) << "window " << w;
    }
    const std::vector<float> params = (*trainer)->Parameters();
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(params.data()), params.size() * sizeof(float), digest);
    std::string hex;
    for (unsigned char b : digest) hex += absl::StrFormat("%02x", b);
    EXPECT_EQ(hex, c.params_sha256()) << "first values: gradacc " << params[0] << " " << params[1] << ", torch "
                                      << c.head(0) << " " << c.head(1);
  }
}

}  // namespace
}  // namespace gradacc
