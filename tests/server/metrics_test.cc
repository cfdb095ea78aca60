// Unit tests of the Prometheus exposition (server/metrics.h): every family
// has its HELP and TYPE once, samples carry the job (and shard) labels, and
// counters, refusals and the fast path's pushes show what Counters holds.
#include "server/metrics.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

v1::Status StatusOf(uint32_t shard, uint32_t num_shards) {
  v1::Status s;
  s.set_job_id("m");
  s.set_step(7);
  s.set_total_steps(10);
  s.set_shard(shard);
  s.set_num_shards(num_shards);
  return s;
}

int Count(const std::string& text, const std::string& line) {
  int n = 0;
  for (absl::string_view l : absl::StrSplit(text, '\n')) n += l == line;
  return n;
}

TEST(PrometheusTest, OneShardsFamiliesAndSamples) {
  TrainerCounters c;
  c.bytes_received = 1024;
  c.bytes_sent = 2048;
  c.rejected_by_reason["stale_window"] = 3;
  c.fast_path_pushes = 5;
  c.staging_peak_bytes = 99;
  const std::string text = RenderPrometheus(StatusOf(0, 1), c);
  EXPECT_EQ(Count(text, "# TYPE gradacc_steps_total counter"), 1) << text;
  EXPECT_EQ(Count(text, "gradacc_steps_total{job=\"m\"} 7"), 1) << text;
  EXPECT_EQ(Count(text, "gradacc_sent_bytes_total{job=\"m\"} 2048"), 1) << text;
  EXPECT_EQ(Count(text, "gradacc_shm_fast_path_pushes_total{job=\"m\"} 5"), 1) << text;
  EXPECT_EQ(Count(text, "gradacc_staging_bytes{job=\"m\",kind=\"peak\"} 99"), 1) << text;
  EXPECT_TRUE(absl::StrContains(text, "reason=\"stale_window\"} 3")) << text;
  // Every sample belongs to a family announced before it.
  std::string family;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      family = std::string(line.substr(0, line.find(' ')));
    } else if (!absl::StartsWith(line, "#")) {
      EXPECT_TRUE(absl::StartsWith(line, family)) << line << " after the family " << family;
    }
  }
}

TEST(PrometheusTest, ShardsShareFamiliesAndCarryTheirLabel) {
  std::vector<ShardMetrics> shards = {{StatusOf(0, 2), {}}, {StatusOf(1, 2), {}}};
  const std::string text = RenderPrometheus(shards);
  EXPECT_EQ(Count(text, "# HELP gradacc_steps_total Optimizer steps applied."), 1) << text;
  EXPECT_EQ(Count(text, "gradacc_steps_total{job=\"m\",shard=\"0\"} 7"), 1) << text;
  EXPECT_EQ(Count(text, "gradacc_steps_total{job=\"m\",shard=\"1\"} 7"), 1) << text;
}

}  // namespace
}  // namespace gradacc
