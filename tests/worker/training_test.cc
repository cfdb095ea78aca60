// The worker's training path end to end, in one process: a GradaccServer on
// a port the OS chose, M client threads running the real training loop
// (worker/training/training.h) on Fashion-MNIST with the CPU backend.
//   * the documented data order;
//   * big-batch equivalence: 1x8, 2x4, 4x2 and 8x1 workers x micro-batches
//     give the same parameters after 20 windows, with short epoch ends;
//   * PyTorch equivalence: tests/golden/mlp_golden.json (gen_mlp_golden.py);
//   * CPU and CUDA gradients agree (where a GPU is present).
#include <cmath>
#include <fstream>
#include <numeric>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "golden/golden.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "worker/training/data_order.h"
#include "worker/training/training.h"

extern "C" void openblas_set_num_threads(int);

namespace gradacc {
namespace {

// Up to 8 worker threads share 2 cores: one BLAS thread each.
const bool kOneBlasThread = [] {
  openblas_set_num_threads(1);
  return true;
}();

const Dataset& Train(uint64_t limit) {
  static std::map<uint64_t, Dataset>* cache = new std::map<uint64_t, Dataset>();
  auto it = cache->find(limit);
  if (it == cache->end()) {
    auto d = LoadFashionMnist(kDefaultDataDir, "train", limit);
    EXPECT_TRUE(d.ok()) << d.status();
    it = cache->emplace(limit, d.ok() ? *std::move(d) : Dataset()).first;
  }
  return it->second;
}

// Runs the job with its num_workers client threads; returns the final
// parameters.
std::vector<float> TrainInProcess(const v1::JobSpec& spec, const Dataset& train, const MlpShape& shape,
                                  std::vector<double>* losses = nullptr) {
  ServerOptions options;
  auto server = GradaccServer::Start(spec, options);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return {};
  const uint32_t m = spec.window().num_workers();
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(m);
  std::vector<double> worker0_losses;
  for (uint32_t r = 0; r < m; ++r) {
    threads.emplace_back([&, r] {
      ClientOptions c;
      c.server = absl::StrCat("127.0.0.1:", (*server)->port());
      c.worker = r;
      c.window_timeout = absl::Seconds(60);
      auto client = Client::Connect(c);
      if (!client.ok()) {
        results[r] = client.status();
        return;
      }
      std::unique_ptr<Backend> backend = MakeCpuBackend(shape);
      TrainingOptions t;
      results[r] = RunTraining(**client, *backend, train, nullptr, t).status();
    });
  }
  for (auto& t : threads) t.join();
  for (uint32_t r = 0; r < m; ++r) EXPECT_TRUE(results[r].ok()) << "worker " << r << ": " << results[r];
  if (losses != nullptr) {
    const v1::Status status = (*server)->trainer()->GetStatus();
    for (const auto& p : status.loss_history()) losses->push_back(p.loss());
  }
  return (*server)->trainer()->Parameters();
}

TEST(DataOrderTest, PermutationIsDocumentedAndComplete) {
  const std::vector<uint32_t> p = EpochPermutation(7, 0, 2000);
  std::set<uint32_t> seen(p.begin(), p.end());
  EXPECT_EQ(seen.size(), 2000u);
  EXPECT_EQ(*seen.rbegin(), 1999u);
  EXPECT_NE(EpochPermutation(7, 1, 2000), p);
  EXPECT_EQ(EpochPermutation(7, 0, 2000), p);
}

TEST(DataOrderTest, SlotsTileEveryWindowForEveryArrangement) {
  for (auto [m, k] : std::vector<std::pair<uint32_t, uint32_t>>{{1, 8}, {2, 4}, {4, 2}, {8, 1}}) {
    WindowGeometry g{1000, m, k, 16};
    ASSERT_EQ(g.windows_per_epoch(), 8u);
    for (uint64_t t = 0; t < 16; ++t) {
      uint64_t expect = (t % 8) * 128;
      for (uint32_t r = 0; r < m; ++r) {
        for (uint32_t j = 0; j < k; ++j) {
          auto s = g.Slot(t, r, j);
          EXPECT_EQ(s.begin, expect);
          expect = s.end;
          EXPECT_LE(s.end - s.begin, 16u);
          if (t % 8 == 7) {
            EXPECT_EQ(s.end - s.begin, 13u);  // 104 samples over 8 slots
          }
        }
      }
      EXPECT_EQ(expect, std::min<uint64_t>(1000, (t % 8 + 1) * 128));
    }
  }
}

v1::JobSpec SmallMlpJob(uint32_t workers, uint32_t micro_batches, uint32_t micro_batch, uint64_t steps) {
  v1::JobSpec spec;
  spec.set_job_id("small");
  *spec.mutable_model() = MlpModelSpec(784, {32}, 10);
  spec.mutable_optimizer()->set_kind(v1::OptimizerSpec::KIND_SGD);
  spec.mutable_optimizer()->set_lr(0.1);
  spec.mutable_optimizer()->mutable_sgd()->set_momentum(0.9);
  spec.mutable_window()->set_num_workers(workers);
  spec.mutable_window()->set_micro_batches(micro_batches);
  spec.mutable_window()->set_micro_batch_size(micro_batch);
  spec.set_total_steps(steps);
  spec.set_seed(3);
  return spec;
}

TEST(TrainingTest, BigBatchEquivalenceAcrossArrangements) {
  // 1000 samples in windows of 128: every 8th window has 104 samples, so
  // the last micro-batches of each epoch have 13 samples instead of 16.
  const Dataset& train = Train(1000);
  MlpShape shape;
  shape.hidden = {32};
  std::vector<float> reference;
  std::vector<double> ref_losses;
  for (auto [m, k] : std::vector<std::pair<uint32_t, uint32_t>>{{1, 8}, {2, 4}, {4, 2}, {8, 1}}) {
    std::vector<double> losses;
    const std::vector<float> p = TrainInProcess(SmallMlpJob(m, k, 16, 20), train, shape, &losses);
    ASSERT_EQ(p.size(), shape.num_parameters());
    ASSERT_EQ(losses.size(), 20u);
    if (reference.empty()) {
      reference = p;
      ref_losses = losses;
      EXPECT_LT(losses.back(), losses.front());
      continue;
    }
    // Relative error of each tensor, ||p - ref|| / ||ref||; the largest
    // element-wise difference is printed too. Only the association of the
    // micro-batch sums differs between arrangements (8 x 1 is bit-identical
    // to 1 x 8), so what remains is f32 rounding.
    double worst_tensor = 0, worst_element = 0;
    const ModelLayout layout = ModelLayout::FromSpec(shape.ToModelSpec()).value();
    for (const auto& t : layout.tensors()) {
      double diff2 = 0, ref2 = 0;
      for (uint64_t i = t.offset; i < t.offset + t.size; ++i) {
        const double d = double{p[i]} - reference[i];
        diff2 += d * d;
        ref2 += double{reference[i]} * reference[i];
        worst_element = std::max(worst_element, std::fabs(d) / std::max(1e-3, std::fabs(double{reference[i]})));
      }
      const double rel = std::sqrt(diff2 / ref2);
      worst_tensor = std::max(worst_tensor, rel);
      EXPECT_LE(rel, 1e-5) << m << " x " << k << " tensor " << t.name;
    }
    std::printf("%d workers x %d micro-batches vs 1 x 8: relative error %.3g (worst tensor), largest element "
                "difference %.3g relative\n", m, k, worst_tensor, worst_element);
    if (m == 8) {
      EXPECT_EQ(worst_tensor, 0.0) << "8 x 1 sums in the same order as 1 x 8";
    }
    for (size_t i = 0; i < losses.size(); ++i) EXPECT_NEAR(losses[i], ref_losses[i], 1e-5 * ref_losses[i]);
  }
}

TEST(TrainingTest, MatchesPyTorch) {
  std::ifstream in(GRADACC_MLP_GOLDEN_JSON);
  std::stringstream ss;
  ss << in.rdbuf();
  test::MlpGolden golden;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(ss.str(), &golden).ok());
  MlpShape shape;
  shape.hidden.assign(golden.hidden().begin(), golden.hidden().end());
  // Our seeded initialiser must reproduce the generator's initial values.
  auto initial = InitialParameters(golden.job());
  ASSERT_TRUE(initial.ok());
  ASSERT_EQ(initial->size(), static_cast<size_t>(golden.initial_params_size()));
  for (int i = 0; i < golden.initial_params_size(); ++i) ASSERT_EQ((*initial)[i], golden.initial_params(i)) << i;

  std::vector<double> losses;
  const std::vector<float> p = TrainInProcess(golden.job(), Train(golden.train_limit()), shape, &losses);
  ASSERT_EQ(p.size(), static_cast<size_t>(golden.params_size()));
  // The gate is the per-tensor relative error ||p - ref|| / ||ref|| (as in
  // the big-batch test above). The largest element-wise difference is only
  // printed: near-zero gradients (border pixels) put Adam in its eps regime,
  // where a rounding difference of the gradient moves an update a lot, and
  // how large depends on the BLAS kernels of the machine that made the
  // golden file (0.00049 on one machine with every tensor within 2.6e-6).
  double worst = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double b = golden.params(static_cast<int>(i));
    worst = std::max(worst, std::fabs(p[i] - b) / std::max(1e-3, std::fabs(b)));
  }
  std::printf("max element-wise relative difference to PyTorch after %d windows: %.3g\n",
              golden.window_loss_size(), worst);
  const ModelLayout layout = ModelLayout::FromSpec(shape.ToModelSpec()).value();
  for (const auto& t : layout.tensors()) {
    double diff2 = 0, ref2 = 0;
    for (uint64_t i = t.offset; i < t.offset + t.size; ++i) {
      const double ref = golden.params(static_cast<int>(i));
      diff2 += (double{p[i]} - ref) * (double{p[i]} - ref);
      ref2 += ref * ref;
    }
    const double rel = std::sqrt(diff2 / ref2);
    std::printf("tensor %s: relative error %.3g\n", t.name.c_str(), rel);
    EXPECT_LE(rel, 1e-5) << t.name;
  }
  ASSERT_EQ(losses.size(), static_cast<size_t>(golden.window_loss_size()));
  for (size_t i = 0; i < losses.size(); ++i) {
    EXPECT_NEAR(losses[i], golden.window_loss(static_cast<int>(i)), 1e-4 * golden.window_loss(static_cast<int>(i)));
  }
}

TEST(TrainingTest, CpuAndCudaGradientsAgree) {
  MlpShape shape;
  shape.hidden = {256, 128};
  auto cuda = MakeCudaBackend(shape);
  if (!cuda.ok()) GTEST_SKIP() << "no CUDA here: " << cuda.status().message();
  std::unique_ptr<Backend> cpu = MakeCpuBackend(shape);
  v1::JobSpec spec;
  *spec.mutable_model() = shape.ToModelSpec();
  auto params = InitialParameters(spec);
  ASSERT_TRUE(params.ok());
  ASSERT_TRUE(cpu->SetParameters(params->span()).ok());
  ASSERT_TRUE((*cuda)->SetParameters(params->span()).ok());
  const Dataset& train = Train(256);
  std::vector<uint32_t> idx(200);
  std::iota(idx.begin(), idx.end(), 0u);
  std::vector<float> x(200 * 784);
  std::vector<uint8_t> y(200);
  train.Gather(idx, x.data(), y.data());
  std::vector<float> g_cpu(shape.num_parameters(), 0.5f), g_gpu(shape.num_parameters(), 0.5f);
  auto l_cpu = cpu->AccumulateGradients(x.data(), y.data(), 200, absl::MakeSpan(g_cpu));
  auto l_gpu = (*cuda)->AccumulateGradients(x.data(), y.data(), 200, absl::MakeSpan(g_gpu));
  ASSERT_TRUE(l_cpu.ok() && l_gpu.ok());
  EXPECT_NEAR(*l_cpu, *l_gpu, 1e-5 * *l_cpu);
  double num = 0, den = 0;
  for (size_t i = 0; i < g_cpu.size(); ++i) {
    num += (double{g_cpu[i]} - g_gpu[i]) * (double{g_cpu[i]} - g_gpu[i]);
    den += double{g_cpu[i]} * g_cpu[i];
  }
  EXPECT_LE(std::sqrt(num / den), 1e-5);
  auto c_cpu = cpu->CountCorrect(x.data(), y.data(), 200);
  auto c_gpu = (*cuda)->CountCorrect(x.data(), y.data(), 200);
  EXPECT_EQ(*c_cpu, *c_gpu);
}

}  // namespace
}  // namespace gradacc
