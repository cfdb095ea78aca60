// Unit tests of Counters: bytes and refusals by reason (what checkpoints
// carry across a restart) and the cumulative step-duration histogram.
#include "server/counters.h"

#include "common/errors.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

TEST(CountersTest, BytesRefusalsAndStepsAreCountedAndSurviveARestart) {
  Counters c;
  c.AddBytes(100, 7);
  c.AddBytes(1, 0);
  c.Refused(v1::ERROR_REASON_STALE_WINDOW);
  c.Refused(v1::ERROR_REASON_STALE_WINDOW);
  c.Refused(v1::ERROR_REASON_UNSPECIFIED);
  c.StepTook(0.003);
  c.StepTook(0.2);
  c.StepTook(1000);  // beyond the last bound: in the count and sum only
  const TrainerCounters s = c.Snapshot();
  EXPECT_EQ(s.bytes_received, 101u);
  EXPECT_EQ(s.bytes_sent, 7u);
  EXPECT_EQ(s.rejected_by_reason.at(ReasonLabel(v1::ERROR_REASON_STALE_WINDOW)), 2u);
  EXPECT_EQ(s.rejected_by_reason.at("other"), 1u);
  ASSERT_EQ(s.step_seconds_counts.size(), s.step_seconds_bounds.size());
  for (size_t b = 0; b < s.step_seconds_bounds.size(); ++b) {
    const double le = s.step_seconds_bounds[b];
    const uint64_t expected = (le >= 0.003 ? 1 : 0) + (le >= 0.2 ? 1 : 0);
    EXPECT_EQ(s.step_seconds_counts[b], expected) << "le " << le;
  }
  EXPECT_EQ(s.step_seconds_count, 3u);
  EXPECT_DOUBLE_EQ(s.step_seconds_sum, 1000.203);

  v1::CheckpointCounters saved;
  c.Export(&saved);
  Counters restarted;
  restarted.Restore(saved);
  restarted.AddBytes(1, 1);
  const TrainerCounters r = restarted.Snapshot();
  EXPECT_EQ(r.bytes_received, 102u);
  EXPECT_EQ(r.bytes_sent, 8u);
  EXPECT_EQ(r.rejected_by_reason, s.rejected_by_reason);
  EXPECT_EQ(r.step_seconds_count, 0u) << "the histogram is this process's";
}

}  // namespace
}  // namespace gradacc
