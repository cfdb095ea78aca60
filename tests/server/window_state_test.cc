// Unit tests of WindowState: push outcomes, the loss scale, elastic newcomers and leavers,
// checkpoint counters, data plans.
#include "server/window_state.h"

#include <cmath>
#include <limits>
#include <string>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "server/request_validator.h"
#include "server/window_state.h"
#include "tests/server/window_fixtures.h"

namespace gradacc {
namespace window_fixtures {
namespace {

TEST(WindowStateTest, PushOutcomes) {
  const v1::JobSpec spec = Job(2);
  WindowState state(&spec, 2, absl::Now());
  std::optional<LateNote> late;
  EXPECT_EQ(ReasonOf(state.Admit(Header(0, 0, 0), absl::Now(), &late)), v1::ERROR_REASON_NOT_JOINED);
  ASSERT_TRUE(state.Join(JoinOf(0), absl::Now()).ok());
  ASSERT_TRUE(state.Join(JoinOf(1), absl::Now()).ok());
  EXPECT_EQ(ReasonOf(state.Admit(Header(0, 1, 1), absl::Now(), &late)), v1::ERROR_REASON_WINDOW_NOT_OPEN);
  Slot slot;
  auto accepted = state.Accept(Header(0, 0, 0), &slot, false, absl::Now(), &late);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_FALSE(accepted->closing.has_value());
  EXPECT_EQ(ReasonOf(state.Admit(Header(0, 0, 0), absl::Now(), &late)), v1::ERROR_REASON_DUPLICATE);
  EXPECT_EQ(ReasonOf(state.Admit(Header(0, 0, 7), absl::Now(), &late)), v1::ERROR_REASON_SECOND_CONTRIBUTION);
  Slot other;
  accepted = state.Accept(Header(1, 0, 0), &other, false, absl::Now(), &late);
  ASSERT_TRUE(accepted.ok());
  ASSERT_TRUE(accepted->closing.has_value()) << "both in: the window closes";
  EXPECT_EQ(ReasonOf(state.Admit(Header(1, 0, 3), absl::Now(), &late)), v1::ERROR_REASON_STALE_WINDOW)
      << "the window is closing without it";
  state.Advance(1, absl::Now());
  late.reset();
  const absl::Status stale = state.Admit(Header(1, 0, 9), absl::Now(), &late);
  EXPECT_EQ(ReasonOf(stale), v1::ERROR_REASON_STALE_WINDOW);
  EXPECT_EQ(ErrorMetadataOf(stale, "open_window"), "1");
  ASSERT_TRUE(late.has_value());
  EXPECT_STREQ(late->outcome, "stale");
  // A key used for window 0 cannot be reused for window 1.
  EXPECT_EQ(ReasonOf(state.Admit(Header(0, 1, 0), absl::Now(), &late)), v1::ERROR_REASON_KEY_REUSED);
  EXPECT_EQ(state.accepted(), 2u);
  EXPECT_EQ(state.stale(), 2u);
  EXPECT_EQ(ReasonOf(state.CheckHeld(0, 1)), v1::ERROR_REASON_CONTRIBUTION_LOST);
  EXPECT_TRUE(state.CheckHeld(0, 0).ok());
}

// Loss scaling: every push carries the window's scale, bit for bit; a job
// without it takes 0 only (an old client of a loss-scaling job is refused,
// naming the scale); such a job accepts a non-finite loss sum.

TEST(WindowStateTest, LossScaleMustBeTheWindows) {
  v1::JobSpec spec = Job(2);
  spec.mutable_optimizer()->set_lr(0.1);
  spec.mutable_loss_scaling()->set_init_scale(1024);
  ASSERT_TRUE(NormalizeJobSpec(spec).ok());
  EXPECT_EQ(spec.loss_scaling().growth_interval(), 2000u) << "GradScaler's defaults fill the zeros";
  WindowState state(&spec, 2, absl::Now());
  state.set_loss_scale(1024);
  ASSERT_TRUE(state.Join(JoinOf(0), absl::Now()).ok());
  ASSERT_TRUE(state.Join(JoinOf(1), absl::Now()).ok());
  std::optional<LateNote> late;
  v1::PushHeader h = Header(0, 0, 0);
  const absl::Status old_client = state.Admit(h, absl::Now(), &late);
  EXPECT_EQ(ReasonOf(old_client), v1::ERROR_REASON_BAD_VALUE);
  EXPECT_EQ(ErrorMetadataOf(old_client, "loss_scale"), "1024");
  EXPECT_NE(old_client.message().find("predates loss scaling"), std::string::npos) << old_client;
  h.set_loss_scale(std::nextafter(1024.0f, 2048.0f));
  EXPECT_EQ(ReasonOf(state.Admit(h, absl::Now(), &late)), v1::ERROR_REASON_BAD_VALUE);
  h.set_loss_scale(1024);
  EXPECT_TRUE(state.Admit(h, absl::Now(), &late).ok());

  const ModelLayout layout = *ModelLayout::FromSpec(spec.model());
  const RequestValidator v(&spec, &layout, 2, {0, 10}, 0, 1);
  h.set_loss_sum(std::numeric_limits<double>::infinity());
  EXPECT_TRUE(v.CheckPushHeader(h).ok()) << "an overflowing window's loss is the step's to judge";

  const v1::JobSpec plain = Job(2);
  WindowState no_scaling(&plain, 2, absl::Now());
  ASSERT_TRUE(no_scaling.Join(JoinOf(0), absl::Now()).ok());
  h = Header(0, 0, 0);
  h.set_loss_scale(2);
  EXPECT_EQ(ReasonOf(no_scaling.Admit(h, absl::Now(), &late)), v1::ERROR_REASON_BAD_VALUE);

  for (auto [field, value] : {std::pair{"growth_factor", 1.0}, {"backoff_factor", 1.0}, {"init_scale", 1e39}}) {
    v1::JobSpec bad = Job(2);
    bad.mutable_optimizer()->set_lr(0.1);
    v1::LossScaling* ls = bad.mutable_loss_scaling();
    if (std::string(field) == "growth_factor") ls->set_growth_factor(value);
    if (std::string(field) == "backoff_factor") ls->set_backoff_factor(value);
    if (std::string(field) == "init_scale") ls->set_init_scale(value);
    const absl::Status s = NormalizeJobSpec(bad);
    EXPECT_NE(s.message().find(field), std::string::npos) << field << ": " << s;
  }
}

TEST(WindowStateTest, ElasticNewcomersAndLeavers) {
  const v1::JobSpec spec = Job(1, /*max_workers=*/3);
  WindowState state(&spec, 3, absl::Now());
  for (uint32_t w : {0u, 1u}) {
    auto joined = state.Join(JoinOf(w), absl::Now());
    ASSERT_TRUE(joined.ok());
    EXPECT_EQ(joined->first_window, 0u) << "joining a window nobody contributed to joins it";
  }
  std::optional<LateNote> late;
  Slot slot;
  auto accepted = state.Accept(Header(0, 0, 0), &slot, false, absl::Now(), &late);
  ASSERT_TRUE(accepted.ok());
  EXPECT_FALSE(accepted->closing.has_value()) << "worker 1 is expected too";
  auto joined = state.Join(JoinOf(2), absl::Now());
  ASSERT_TRUE(joined.ok());
  EXPECT_EQ(joined->first_window, 1u) << "a window with contributions is not joined";
  EXPECT_EQ(ReasonOf(state.Admit(Header(2, 0, 0), absl::Now(), &late)), v1::ERROR_REASON_NOT_A_MEMBER_YET);
  // Worker 1 leaves before contributing: it is no longer waited for.
  std::optional<ClosingWindow> closing;
  ASSERT_TRUE(state.Leave(1, absl::Now(), &closing).ok());
  ASSERT_TRUE(closing.has_value());
  EXPECT_EQ(closing->workers, std::vector<uint32_t>{0});
  state.Advance(1, absl::Now());
  EXPECT_TRUE(state.window().expected(0));
  EXPECT_FALSE(state.window().expected(1)) << "left";
  EXPECT_TRUE(state.window().expected(2)) << "the newcomer's first window";
  EXPECT_EQ(ReasonOf(state.Admit(Header(1, 1, 1), absl::Now(), &late)), v1::ERROR_REASON_NOT_JOINED);
}

TEST(WindowStateTest, CheckpointCountersLeaveOutWindowsTheyDoNotHold) {
  const v1::JobSpec spec = Job(3);
  WindowState state(&spec, 3, absl::Now());
  for (uint32_t w = 0; w < 3; ++w) ASSERT_TRUE(state.Join(JoinOf(w), absl::Now()).ok());
  std::optional<LateNote> late;
  for (uint32_t w = 0; w < 3; ++w) {
    Slot slot;
    auto accepted = state.Accept(Header(w, 0, 0), &slot, false, absl::Now(), &late);
    ASSERT_TRUE(accepted.ok()) << accepted.status();
    EXPECT_EQ(accepted->closing.has_value(), w == 2);
  }
  // Window 0 is closing: a checkpoint of version 0 (a shutdown now) holds
  // none of it; one of version 1 holds it all.
  v1::CheckpointState at0, at1;
  state.Export(0, &at0);
  state.Export(1, &at1);
  EXPECT_EQ(at0.counters().accepted(), 0u);
  EXPECT_EQ(at0.workers(0).contributions(), 0u);
  EXPECT_EQ(at1.counters().accepted(), 3u);
  EXPECT_EQ(at1.workers(2).contributions(), 1u);
  state.Advance(1, absl::Now());
  Slot slot;
  ASSERT_TRUE(state.Accept(Header(1, 1, 1), &slot, false, absl::Now(), &late).ok());
  // A duplicate and a stale push: counted, and kept by a checkpoint.
  EXPECT_EQ(ReasonOf(state.Admit(Header(1, 1, 1), absl::Now(), &late)), v1::ERROR_REASON_DUPLICATE);
  EXPECT_EQ(ReasonOf(state.Admit(Header(0, 0, 9), absl::Now(), &late)), v1::ERROR_REASON_STALE_WINDOW);
  v1::CheckpointState open;
  state.Export(1, &open);  // at shutdown, window 1 open with one contribution
  EXPECT_EQ(open.counters().accepted(), 3u);
  EXPECT_EQ(open.workers(1).contributions(), 1u);
  EXPECT_EQ(open.counters().duplicate(), 1u);
  EXPECT_EQ(open.counters().stale(), 1u);
  EXPECT_EQ(open.workers(0).stale(), 1u);
  WindowState resumed(&spec, 3, absl::Now());
  resumed.Restore(open, absl::Now());
  EXPECT_EQ(resumed.accepted(), 3u);
  EXPECT_EQ(resumed.duplicates(), 1u);
  EXPECT_EQ(resumed.stale(), 1u);
  EXPECT_EQ(resumed.members().at(0).stale, 1u);
}

// A job with a data plan: a joiner takes an open window only while it has no
// members; the plan's identity guards pushes; the cursor advances by the
// plan, survives a checkpoint, and membership does not (every worker joins
// again, so ranks that never come back hold nothing up).

TEST(WindowStateTest, DataPlanJoinersCursorAndResume) {
  v1::JobSpec spec = Job(4, /*max_workers=*/4);
  spec.mutable_window()->set_micro_batches(2);
  spec.mutable_window()->set_micro_batch_size(5);
  spec.mutable_data_plan()->set_samples(45);
  spec.mutable_data_plan()->set_epochs(2);
  spec.set_total_steps(100);
  WindowState state(&spec, 4, absl::Now());
  EXPECT_EQ(state.plan().members_size(), 0);
  ASSERT_TRUE(state.Join(JoinOf(2), absl::Now()).ok());
  EXPECT_EQ(state.plan().members_size(), 1) << "the first joiner takes the empty window";
  EXPECT_EQ(state.plan().samples(), 10u);
  auto joined = state.Join(JoinOf(0), absl::Now());
  ASSERT_TRUE(joined.ok());
  EXPECT_EQ(joined->first_window, 1u) << "window 0 has a member: the next one is worker 0's first";
  ASSERT_TRUE(state.Join(JoinOf(1), absl::Now()).ok());
  std::optional<LateNote> late;
  v1::PushHeader h = Header(2, 0, 0);
  h.set_plan_id(state.plan().id() + 1);
  EXPECT_EQ(ReasonOf(state.Admit(h, absl::Now(), &late)), v1::ERROR_REASON_PLAN_CHANGED);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_PLAN_CHANGED), v1::CLIENT_ACTION_RECOMPUTE);
  h.set_plan_id(state.plan().id());
  Slot slot;
  auto accepted = state.Accept(h, &slot, false, absl::Now(), &late);
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  ASSERT_TRUE(accepted->closing.has_value());
  EXPECT_EQ(accepted->closing->plan.samples(), 10u);
  EXPECT_FALSE(state.DoneAfterClose());
  v1::CheckpointState at1;
  state.Export(1, &at1);  // the closing window's checkpoint: the cursor after it
  at1.set_version(1);
  EXPECT_EQ(at1.plan_epoch(), 0u);
  EXPECT_EQ(at1.plan_offset(), 10u);
  state.Advance(1, absl::Now());
  EXPECT_EQ(state.plan().offset(), 10u);
  EXPECT_EQ(state.plan().members_size(), 3) << "workers 0, 1, 2";
  EXPECT_EQ(state.plan().samples(), 30u);
  // Resume with the cursor, not the members.
  WindowState resumed(&spec, 4, absl::Now());
  resumed.Restore(at1, absl::Now());
  EXPECT_EQ(resumed.plan().members_size(), 0);
  EXPECT_EQ(resumed.plan().offset(), 10u);
  ASSERT_TRUE(resumed.Join(JoinOf(1), absl::Now()).ok());
  EXPECT_EQ(resumed.plan().members_size(), 1);
  EXPECT_NE(resumed.plan().id(), state.plan().id());
  // The job ends when the cursor reaches its epochs: 45 samples, 10 a window
  // with one member.
  uint64_t version = 1;
  while (!resumed.done()) {
    v1::PushHeader p = Header(1, version, version);
    p.set_plan_id(resumed.plan().id());
    Slot s;
    auto a = resumed.Accept(p, &s, false, absl::Now(), &late);
    ASSERT_TRUE(a.ok()) << a.status();
    resumed.Advance(++version, absl::Now());
    ASSERT_LT(version, 20u);
  }
  EXPECT_EQ(version, 1u + 4u + 5u) << "epoch 0: 35 more samples (4 windows); epoch 1: 45 (5 windows)";
}

}  // namespace
}  // namespace window_fixtures
}  // namespace gradacc
