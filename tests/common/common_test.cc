// Unit tests of common/: kernels, job specs, initialisers, safetensors.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <vector>

#include "absl/base/casts.h"
#include "common/job_spec.h"
#include "common/kernels.h"
#include "common/safetensors.h"
#include "common/log.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + std::to_string(getpid()) + "_" + name;
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

TEST(KernelsTest, AddScaleDivide) {
  std::vector<float> a = {1, 2, 3, 4, 5}, b = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  AddInto(absl::MakeSpan(a), b);
  EXPECT_EQ(a, (std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f, 5.5f}));
  DivideInPlace(absl::MakeSpan(a), 0.5f);
  EXPECT_EQ(a, (std::vector<float>{3, 5, 7, 9, 11}));
  ScaleInPlace(absl::MakeSpan(a), 2);
  EXPECT_EQ(a[4], 22);
  EXPECT_DOUBLE_EQ(SumOfSquares(std::vector<float>{3, 4, 0, 0, 0, 12}), 169.0);
}

// SumOfSquares's documented order: element i into accumulator i % 4, in
// double, the four added pairwise at the end.
double FourAccumulatorSumOfSquares(const float* x, size_t n) {
  double acc[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) acc[k] += double{x[i + k]} * x[i + k];
  }
  for (; i < n; ++i) acc[0] += double{x[i]} * x[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

TEST(KernelsTest, SumOfSquaresEachGivesEveryArraysBits) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> value(-3e3f, 3e3f);
  for (size_t n : {0, 1, 3, 4, 5, 7, 1023, 4099}) {
    for (size_t count = 1; count <= 9; ++count) {
      std::vector<std::vector<float>> arrays(count, std::vector<float>(n));
      std::vector<const float*> xs;
      for (auto& a : arrays) {
        for (float& v : a) v = value(rng) * (rng() % 7 == 0 ? 1e-30f : 1.0f);
        xs.push_back(a.data());
      }
      std::vector<double> out(count, -1);
      SumOfSquaresEach(xs, n, out.data());
      for (size_t j = 0; j < count; ++j) {
        const double want = FourAccumulatorSumOfSquares(arrays[j].data(), n);
        EXPECT_EQ(absl::bit_cast<uint64_t>(out[j]), absl::bit_cast<uint64_t>(want)) << "n=" << n << " array " << j;
        EXPECT_EQ(absl::bit_cast<uint64_t>(SumOfSquares(arrays[j])), absl::bit_cast<uint64_t>(want));
      }
    }
  }
}

TEST(KernelsTest, FindsNonFinite) {
  std::vector<float> x(1000, 1.0f);
  EXPECT_EQ(FirstNonFinite(x), -1);
  x[777] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FirstNonFinite(x), 777);
  x[3] = std::nanf("");
  EXPECT_EQ(FirstNonFinite(x), 3);
  // Every position of the vector steps and of the tail; the largest finite
  // values of both signs are not flagged.
  const float lim = std::numeric_limits<float>::max();
  for (size_t n = 0; n < 20; ++n) {
    std::vector<float> y(n, -lim);
    for (size_t i = 0; i < n; i += 2) y[i] = lim;
    EXPECT_EQ(FirstNonFinite(y), -1) << n;
    for (size_t at = 0; at < n; ++at) {
      for (float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                        -std::nanf("")}) {
        std::vector<float> z = y;
        z[at] = bad;
        EXPECT_EQ(FirstNonFinite(z), static_cast<int64_t>(at)) << n << " " << at;
      }
    }
  }
}

TEST(KernelsTest, LittleEndianRoundTrip) {
  std::vector<float> x = {1.5f, -2.25f, 1e-30f};
  std::string bytes(12, '\0');
  CopyToLittleEndian(x, bytes.data());
  EXPECT_EQ(static_cast<unsigned char>(bytes[3]), 0x3f);  // 1.5f = 0x3fc00000, LE
  std::vector<float> y(3);
  EXPECT_EQ(CopyFromLittleEndian(bytes.data(), absl::MakeSpan(y)), -1);
  EXPECT_EQ(x, y);
}

TEST(JobSpecTest, LoadsTextFormatAndJson) {
  const std::string text = TempPath("job.textproto");
  WriteFile(text, R"pb(
    job_id: "t"
    model { tensors { name: "w" shape: [2, 3] init { uniform { low: -1 high: 1 } } } }
    optimizer { kind: KIND_ADAMW lr: 0.01 adam { weight_decay: 0.01 } }
    window { num_workers: 2 micro_batches: 4 }
    total_steps: 10
  )pb");
  auto spec = LoadJobSpecFile(text);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(NormalizeJobSpec(*spec).ok());
  EXPECT_EQ(spec->optimizer().adam().beta2(), 0.999);
  EXPECT_EQ(spec->window().num_workers(), 2u);

  const std::string json = TempPath("job.json");
  WriteFile(json, R"({"jobId": "j", "model": {"tensors": [{"name": "b", "shape": [4]}]},
                      "optimizer": {"kind": "KIND_SGD", "lr": 0.1}, "window": {"numWorkers": 3},
                      "totalSteps": "5"})");
  auto from_json = LoadJobSpecFile(json);
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  EXPECT_EQ(from_json->total_steps(), 5u);
  EXPECT_EQ(from_json->window().num_workers(), 3u);
}

TEST(JobSpecTest, ParseErrorsNameTheProblem) {
  const std::string text = TempPath("bad.textproto");
  WriteFile(text, "job_id: \"x\"\nmodle { }\n");
  auto spec = LoadJobSpecFile(text);
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find("modle"), std::string::npos) << spec.status();
  EXPECT_NE(spec.status().message().find("line 2"), std::string::npos) << spec.status();
  EXPECT_EQ(LoadJobSpecFile(TempPath("missing.textproto")).status().code(), absl::StatusCode::kNotFound);
}

TEST(JobSpecTest, NormalizeRejectsBadFields) {
  auto expect_bad = [](auto mutate, const std::string& field) {
    v1::JobSpec spec = DefaultJobSpec();
    mutate(spec);
    absl::Status s = NormalizeJobSpec(spec);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), std::string::npos) << s;
  };
  expect_bad([](v1::JobSpec& s) { s.mutable_optimizer()->set_lr(0); }, "optimizer.lr");
  expect_bad([](v1::JobSpec& s) { s.mutable_window()->set_num_workers(0); }, "window.num_workers");
  expect_bad([](v1::JobSpec& s) { s.set_total_steps(0); }, "total_steps");
  expect_bad([](v1::JobSpec& s) { s.mutable_model()->mutable_tensors(0)->set_shape(0, 0); }, "shape");
  expect_bad([](v1::JobSpec& s) { s.mutable_model()->mutable_tensors(1)->set_name("fc1.weight"); }, "duplicate");
  expect_bad([](v1::JobSpec& s) { s.mutable_model()->mutable_tensors(0)->set_shape(0, uint64_t{1} << 40); },
             "too large");
  expect_bad(
      [](v1::JobSpec& s) {
        s.mutable_optimizer()->set_kind(v1::OptimizerSpec::KIND_SGD);
        s.mutable_optimizer()->mutable_sgd()->set_nesterov(true);
      },
      "nesterov");
  expect_bad([](v1::JobSpec& s) { s.mutable_schedule()->set_kind(v1::LrSchedule::KIND_STEP); }, "step_size");
  expect_bad([](v1::JobSpec& s) { s.mutable_clipping()->set_max_norm(-1); }, "clipping");
}

TEST(JobSpecTest, DefaultJobIsTheMainJobMlp) {
  v1::JobSpec spec = DefaultJobSpec();
  ASSERT_TRUE(NormalizeJobSpec(spec).ok());
  auto layout = ModelLayout::FromSpec(spec.model());
  ASSERT_TRUE(layout.ok());
  ASSERT_EQ(layout->tensors().size(), 6u);
  EXPECT_EQ(layout->tensors()[0].name, "fc1.weight");
  EXPECT_EQ(layout->tensors()[0].shape, (std::vector<uint64_t>{256, 784}));
  EXPECT_EQ(layout->tensors()[5].name, "fc3.bias");
  EXPECT_EQ(layout->num_elements(), 784u * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10);
}

TEST(JobSpecTest, SeededInitialisersAreReproducibleAndInRange) {
  v1::JobSpec spec = DefaultJobSpec();
  ASSERT_TRUE(NormalizeJobSpec(spec).ok());
  auto a = InitialParameters(spec);
  auto b = InitialParameters(spec);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->size(), b->size());
  EXPECT_EQ(std::memcmp(a->data(), b->data(), a->size() * 4), 0);
  const float bound = 1.0f / std::sqrt(784.0f);
  double mean = 0;
  for (size_t i = 0; i < 784 * 256; ++i) {
    ASSERT_LE(std::fabs((*a)[i]), bound);
    mean += (*a)[i];
  }
  EXPECT_NEAR(mean / (784 * 256), 0.0, 1e-3);
  // The documented generator: element 0 of tensor 0 with seed 42 + 1000003.
  const double u = UniformAt(42 + 1000003, 0);
  EXPECT_FLOAT_EQ((*a)[0], static_cast<float>(-bound + 2 * double{bound} * u));
  spec.set_seed(7);
  auto c = InitialParameters(spec);
  EXPECT_NE((*c)[0], (*a)[0]);
}

TEST(JobSpecTest, NormalInitialiserHasItsMoments) {
  v1::JobSpec spec;
  auto* t = spec.mutable_model()->add_tensors();
  t->set_name("n");
  t->add_shape(100000);
  t->mutable_init()->mutable_normal()->set_mean(2);
  t->mutable_init()->mutable_normal()->set_stddev(0.5);
  auto p = InitialParameters(spec);
  ASSERT_TRUE(p.ok());
  double sum = 0, sq = 0;
  for (size_t i = 0; i < p->size(); ++i) {
    sum += (*p)[i];
    sq += double{(*p)[i]} * (*p)[i];
  }
  const double mean = sum / p->size();
  EXPECT_NEAR(mean, 2, 0.01);
  EXPECT_NEAR(std::sqrt(sq / p->size() - mean * mean), 0.5, 0.01);
}

TEST(SafetensorsTest, RoundTripWithMetadata) {
  std::vector<float> w = {1, 2, 3, 4, 5, 6}, b = {-1};
  const std::string path = TempPath("t.safetensors");
  ASSERT_TRUE(WriteSafetensorsFile(path, {{"w", {2, 3}, w}, {"b", {1}, b}}, {{"step", "3"}}).ok());
  auto read = ReadSafetensorsFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->tensors.at("w").shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(read->tensors.at("w").data, w);
  EXPECT_EQ(read->tensors.at("b").data, b);
  EXPECT_EQ(read->metadata.at("step"), "3");
}

TEST(SafetensorsTest, TruncatedAndCorruptFilesAreErrors) {
  std::vector<float> w(100, 1.0f);
  const std::string bytes = EncodeSafetensors({{"w", {100}, w}});
  EXPECT_TRUE(DecodeSafetensors(bytes).ok());
  EXPECT_EQ(DecodeSafetensors(bytes.substr(0, bytes.size() - 4)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeSafetensors(bytes.substr(0, 5)).status().code(), absl::StatusCode::kDataLoss);
  std::string bad_header = bytes;
  bad_header[8] = '#';  // the header's opening brace
  EXPECT_FALSE(DecodeSafetensors(bad_header).ok());
  std::string huge = bytes;
  huge[7] = 0x7f;  // header length of ~9e18
  EXPECT_EQ(DecodeSafetensors(huge).status().code(), absl::StatusCode::kDataLoss);
}

TEST(SafetensorsTest, InitialParametersFromFile) {
  v1::JobSpec spec;
  auto* t = spec.mutable_model()->add_tensors();
  t->set_name("w");
  t->add_shape(2);
  const std::string path = TempPath("init.safetensors");
  std::vector<float> w = {0.25f, -0.5f};
  ASSERT_TRUE(WriteSafetensorsFile(path, {{"w", {2}, w}}).ok());
  spec.mutable_model()->set_safetensors_path(path);
  auto p = InitialParameters(spec);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ((*p)[1], -0.5f);
  t->set_shape(0, 3);
  EXPECT_EQ(InitialParameters(spec).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gradacc

namespace gradacc {
namespace {

TEST(LogTest, LevelsFilterAndChecksAbortWithWhereAndWhy) {
  LogLevel level = LogLevel::kInfo;
  EXPECT_TRUE(ParseLogLevel("WARNING", &level));
  EXPECT_EQ(level, LogLevel::kWarning);
  EXPECT_FALSE(ParseLogLevel("loud", &level));
  EXPECT_EQ(level, LogLevel::kWarning) << "an unknown name changes nothing";
  SetLogLevel(LogLevel::kWarning);
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  EXPECT_TRUE(LogEnabled(LogLevel::kError));
  ::testing::internal::CaptureStderr();
  SetLogProgram("gradacc-test");
  GRADACC_LOG(INFO, "not shown %d", 1);
  GRADACC_LOG(WARNING, "shown %d", 2);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "gradacc-test: shown 2\n");
  SetLogLevel(LogLevel::kInfo);
  GRADACC_CHECK(1 + 1 == 2);
  EXPECT_DEATH(GRADACC_CHECK_MSG(1 + 1 == 3, "arithmetic is %s", "off"),
               "gradacc-test: CHECK failed at .*common_test.cc:[0-9]+: 1 \\+ 1 == 3 — arithmetic is off");
}

}  // namespace
}  // namespace gradacc
