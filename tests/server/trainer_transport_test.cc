// Unit tests of the Trainer (server/trainer.h) by way of moving gradients:
// shared-memory segments, hierarchical pushes that cover other workers,
// compressed (bf16, f16) chunks.
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
#include "server/trainer.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/test_util.h"

// In the fixtures' namespace: SmallJob, MakeWindow, NewTrainer, Push.
namespace gradacc::trainer_fixtures {
namespace {

TEST(TrainerSharedMemoryTest, SegmentPushesMatchChunksAndNaNIsRefused) {
  constexpr uint32_t kWorkers = 3;
  const v1::JobSpec spec = SmallJob(kWorkers, 4, v1::OptimizerSpec::KIND_ADAM);
  auto shm = NewSharedMemoryTrainer(spec, "shm_unit");
  ASSERT_NE(shm, nullptr);
  ASSERT_TRUE(shm->shared_memory_on());
  auto grpc = NewTrainer(spec);
  const size_t n = shm->size();
  std::vector<std::unique_ptr<ShmSegment>> segments;
  std::vector<uint64_t> generations;
  for (uint32_t w = 0; w < kWorkers; ++w) {
    v1::AttachSharedMemoryRequest r;
    r.set_worker(w);
    auto offer = shm->AttachSharedMemory(r);
    ASSERT_TRUE(offer.ok() && offer->available()) << offer.status() << offer->reason();
    auto segment = ShmSegment::Open(offer->grad_path(), true, n, {offer->nonce_hi(), offer->nonce_lo()});
    ASSERT_TRUE(segment.ok()) << segment.status();
    segments.push_back(*std::move(segment));
    generations.push_back(offer->generation());
    // A wrong nonce is refused: another server's segment.
    EXPECT_FALSE(ShmSegment::Open(offer->params_path(), false, n, {offer->nonce_hi(), offer->nonce_lo() + 1}).ok());
  }
  ASSERT_TRUE(testing::BitIdentical(shm->Parameters(), grpc->Parameters())) << "initial";
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
        auto session = shm->BeginPush(header(c));
        ASSERT_TRUE(session.ok()) << session.status();
        EXPECT_EQ((*session)->AddChunk(0, 0, testing::Bytes(c.grad.data(), 1)).code(),
                  absl::StatusCode::kInvalidArgument);  // no chunks on a segment push
        session = shm->BeginPush(header(c));
        ASSERT_TRUE(session.ok()) << session.status();
        auto refused = shm->Commit(std::move(*session));
        EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_NE(refused.status().message().find("not finite at element 17"), std::string::npos) << refused.status();
        EXPECT_EQ(shm->GetStatus().window().contributions_received(), w);
        segments[1]->data()[17] = c.grad[17];
      }
      auto session = shm->BeginPush(header(c));
      ASSERT_TRUE(session.ok()) << session.status();
      auto committed = shm->Commit(std::move(*session));
      ASSERT_TRUE(committed.ok()) << committed.status();
      if (committed->closed_window) {
        ASSERT_TRUE(shm->AwaitVersion(v + 1, absl::Seconds(60)));
      }
      ASSERT_TRUE(testing::Push(*grpc, c).ok());
    }
    ASSERT_TRUE(testing::BitIdentical(shm->Parameters(), grpc->Parameters())) << "after window " << v;
  }
  EXPECT_TRUE(testing::BitIdentical(shm->Parameters(), grpc->Parameters()));
  EXPECT_EQ(shm->GetStatus().workers(0).transport(), v1::TRANSPORT_SHARED_MEMORY);
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
  auto shm = NewSharedMemoryTrainer(spec, "shm_restart");
  ASSERT_NE(shm, nullptr);
  auto reference = NewTrainer(spec);
  const size_t n = shm->size();
  const std::vector<testing::Contribution> window = MakeWindow(0, kWorkers, n, 5);
  auto attach = [&](uint32_t w) {
    v1::AttachSharedMemoryRequest r;
    r.set_worker(w);
    auto offer = shm->AttachSharedMemory(r);
    EXPECT_TRUE(offer.ok() && offer->available());
    auto segment = ShmSegment::Open(offer->grad_path(), true, n, {offer->nonce_hi(), offer->nonce_lo()});
    EXPECT_TRUE(segment.ok()) << segment.status();
    return std::make_pair(*std::move(segment), offer->generation());
  };
  auto push = [&](const testing::Contribution& c, uint64_t generation) {
    v1::PushHeader h = testing::HeaderOf(c, n);
    h.set_shared_memory(true);
    h.set_shared_memory_generation(generation);
    auto session = shm->BeginPush(h);
    if (!session.ok()) return session.status();
    return shm->Commit(std::move(*session)).status();
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
  ASSERT_TRUE(shm->AwaitVersion(1, absl::Seconds(60)));
  for (const auto& c : window) ASSERT_TRUE(Push(*reference, c).ok());
  EXPECT_TRUE(testing::BitIdentical(shm->Parameters(), reference->Parameters()))
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
    ASSERT_TRUE((*session)
                    ->AddChunk(static_cast<uint32_t>(i), 0, testing::Bytes(sum.data() + tensor.offset, tensor.size))
                    .ok());
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
  for (const auto& [wire, u] :
       {std::pair{v1::WIRE_FORMAT_BF16, std::ldexp(1.0, -8)}, std::pair{v1::WIRE_FORMAT_F16, std::ldexp(1.0, -11)}}) {
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

}  // namespace
}  // namespace gradacc::trainer_fixtures
