// What the Trainer's unit tests share (tests/server/trainer_*_test.cc): a
// small two-tensor job, windows of gradients spanning many magnitudes (so
// that the order of float additions shows), and a trainer every worker
// joined.
#ifndef GRADACC_TESTS_SERVER_TRAINER_FIXTURES_H_
#define GRADACC_TESTS_SERVER_TRAINER_FIXTURES_H_

#include <cmath>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "server/trainer.h"
#include "tests/test_util.h"

namespace gradacc::trainer_fixtures {

using testing::Contribution;
using testing::Push;

// w: 37 x 11 (uniform init), b: 11 — 418 elements.
inline v1::JobSpec SmallJob(uint32_t workers, uint64_t steps,
                            v1::OptimizerSpec::Kind kind = v1::OptimizerSpec::KIND_SGD) {
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
inline std::vector<Contribution> MakeWindow(uint64_t window, uint32_t workers, size_t n, uint32_t seed) {
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

inline std::unique_ptr<Trainer> NewTrainer(const v1::JobSpec& spec) {
  auto t = Trainer::Create(spec, TrainerOptions());
  EXPECT_TRUE(t.ok()) << t.status();
  testing::JoinAll(**t);
  return std::move(*t);
}

// A trainer with shared memory on (segments in a fresh folder `tag` under
// the test's temporary folder) that every worker joined.
inline std::unique_ptr<Trainer> NewSharedMemoryTrainer(const v1::JobSpec& spec, const std::string& tag) {
  const std::string dir = ::testing::TempDir() + "/" + tag;
  std::filesystem::create_directories(dir);
  TrainerOptions options;
  options.shared_memory_dir = dir;
  auto t = Trainer::Create(spec, options);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return nullptr;
  testing::JoinAll(**t);
  return std::move(*t);
}

}  // namespace gradacc::trainer_fixtures

#endif  // GRADACC_TESTS_SERVER_TRAINER_FIXTURES_H_
