// Unit tests of Progress: the loss history (bounded), throughput over the
// last steps, the last step's samples and missing workers, test accuracy,
// and what a checkpoint keeps of it across a restart.
#include "server/progress.h"

#include "gtest/gtest.h"

namespace gradacc {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

TEST(ProgressTest, StepsRatesAccuracyAndARestart) {
  Progress p;
  v1::StepTiming timing;
  timing.set_reduce_seconds(0.25);
  for (uint64_t v = 1; v <= 40; ++v) {
    p.RecordStep(v, 10.0 / static_cast<double>(v), 1.0f, /*samples=*/8,
                 v == 40 ? std::vector<uint32_t>{2} : std::vector<uint32_t>{}, timing,
                 kT0 + absl::Milliseconds(100 * static_cast<int64_t>(v)));
  }
  p.RecordAccuracy(40, 0.875);
  p.NoteWorkersAhead(41);
  p.NoteWorkersAhead(39);  // never goes back
  p.SetFinalWritten();
  v1::Status s;
  p.Fill(&s);
  EXPECT_DOUBLE_EQ(s.last_loss(), 0.25);
  ASSERT_EQ(s.loss_history_size(), 32) << "bounded";
  EXPECT_EQ(s.loss_history(0).step(), 9u);
  EXPECT_EQ(s.loss_history(31).step(), 40u);
  // 32 steps kept, 100 ms apart: 10 steps/s, 80 samples/s.
  EXPECT_NEAR(s.steps_per_second(), 10.0, 1e-9);
  EXPECT_NEAR(s.samples_per_second(), 80.0, 1e-9);
  EXPECT_DOUBLE_EQ(s.last_step().reduce_seconds(), 0.25);
  ASSERT_EQ(s.last_step_missing_workers_size(), 1);
  EXPECT_EQ(s.last_step_missing_workers(0), 2u);
  EXPECT_EQ(s.last_step_samples(), 8u);
  EXPECT_DOUBLE_EQ(s.test_accuracy(), 0.875);
  EXPECT_EQ(s.test_accuracy_step(), 40u);
  ASSERT_EQ(s.accuracy_history_size(), 1);
  EXPECT_TRUE(s.final_params_written());
  EXPECT_EQ(s.workers_ahead_version(), 41u);

  v1::CheckpointState saved;
  p.Export(&saved);
  Progress resumed;
  resumed.Restore(saved, "ckpt-000040", /*restarts=*/2);
  v1::Status r;
  resumed.Fill(&r);
  EXPECT_EQ(r.loss_history_size(), 32);
  EXPECT_DOUBLE_EQ(r.last_loss(), 0.25);
  EXPECT_DOUBLE_EQ(r.test_accuracy(), 0.875);
  EXPECT_EQ(r.restored_from(), "ckpt-000040");
  EXPECT_EQ(r.server_restarts(), 2u);
  EXPECT_EQ(r.steps_per_second(), 0.0) << "no rate before two steps of this process";
}

}  // namespace
}  // namespace gradacc
