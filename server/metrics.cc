#include "server/metrics.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace gradacc {
namespace {

void Metric(std::string& out, const char* name, const char* type, const char* help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

std::string Num(double v) { return absl::StrFormat("%.17g", v); }

// The last closed window's slowest worker, every worker's late streak and
// the stragglers.
void RenderStragglers(std::string& out, const v1::Status& s, const std::string& job) {
  const v1::WindowArrivals& a = s.last_window_arrivals();
  Metric(out, "gradacc_slowest_worker_behind_median_seconds", "gauge",
         "The last closed window's slowest worker (label) and how far behind the median arrival it was (a worker "
         "missing at the close: at least this).");
  if (a.slowest_worker() >= 0) {
    absl::StrAppend(&out, "gradacc_slowest_worker_behind_median_seconds{", job, ",worker=\"", a.slowest_worker(),
                    "\",missing=\"", a.slowest_missing() ? "true" : "false", "\"} ",
                    Num(a.slowest_behind_median_seconds()), "\n");
  }
  Metric(out, "gradacc_worker_late_windows", "gauge",
         "Closed windows in a row that the worker was missing from when they closed.");
  for (const auto& w : s.workers()) {
    absl::StrAppend(&out, "gradacc_worker_late_windows{", job, ",worker=\"", w.worker(), "\"} ", w.late_windows(),
                    "\n");
  }
  Metric(out, "gradacc_straggler", "gauge",
         "1 for a worker missing from --straggler_windows closed windows in a row or more (until it contributes "
         "again).");
  for (const auto& w : s.workers()) {
    absl::StrAppend(&out, "gradacc_straggler{", job, ",worker=\"", w.worker(), "\"} ", w.straggler() ? 1 : 0, "\n");
  }
}

// One shard's exposition; `job` is the label set every sample starts with.
std::string RenderShard(const v1::Status& s, const TrainerCounters& c, const std::string& job) {
  std::string out;
  Metric(out, "gradacc_steps_total", "counter", "Optimizer steps applied.");
  absl::StrAppend(&out, "gradacc_steps_total{", job, "} ", s.step(), "\n");
  Metric(out, "gradacc_total_steps", "gauge", "Steps the job runs in all.");
  absl::StrAppend(&out, "gradacc_total_steps{", job, "} ", s.total_steps(), "\n");
  Metric(out, "gradacc_job_done", "gauge", "1 once the job has taken its last step.");
  absl::StrAppend(&out, "gradacc_job_done{", job, "} ", s.state() == v1::JOB_STATE_DONE ? 1 : 0, "\n");
  Metric(out, "gradacc_window_contributions", "gauge", "Contributions of the open window, received and expected.");
  absl::StrAppend(&out, "gradacc_window_contributions{", job, ",kind=\"received\"} ",
                  s.window().contributions_received(), "\n");
  absl::StrAppend(&out, "gradacc_window_contributions{", job, ",kind=\"expected\"} ",
                  s.window().contributions_expected(), "\n");
  Metric(out, "gradacc_window_samples", "gauge", "Samples received in the open window.");
  absl::StrAppend(&out, "gradacc_window_samples{", job, "} ", s.window().samples_received(), "\n");
  Metric(out, "gradacc_contributions_total", "counter", "Pushes by outcome.");
  absl::StrAppend(&out, "gradacc_contributions_total{", job, ",outcome=\"accepted\"} ", s.contributions_accepted(),
                  "\n");
  absl::StrAppend(&out, "gradacc_contributions_total{", job, ",outcome=\"duplicate\"} ",
                  s.contributions_duplicate(), "\n");
  absl::StrAppend(&out, "gradacc_contributions_total{", job, ",outcome=\"stale\"} ", s.contributions_stale(), "\n");
  absl::StrAppend(&out, "gradacc_contributions_total{", job, ",outcome=\"rejected\"} ", s.contributions_rejected(),
                  "\n");
  Metric(out, "gradacc_rejected_contributions_total", "counter", "Rejected pushes by reason.");
  for (const auto& [reason, n] : c.rejected_by_reason) {
    absl::StrAppend(&out, "gradacc_rejected_contributions_total{", job, ",reason=\"", reason, "\"} ", n, "\n");
  }
  Metric(out, "gradacc_received_bytes_total", "counter", "Gradient bytes received in pushes.");
  absl::StrAppend(&out, "gradacc_received_bytes_total{", job, "} ", c.bytes_received, "\n");
  Metric(out, "gradacc_sent_bytes_total", "counter", "Parameter bytes sent in pulls.");
  absl::StrAppend(&out, "gradacc_sent_bytes_total{", job, "} ", c.bytes_sent, "\n");
  Metric(out, "gradacc_staging_bytes", "gauge",
         "Gradient bytes waiting for their turn in the running sum (kind=now) and the most at once (kind=peak); "
         "bounded by --staging_mb.");
  absl::StrAppend(&out, "gradacc_staging_bytes{", job, ",kind=\"now\"} ", c.staging_bytes, "\n");
  absl::StrAppend(&out, "gradacc_staging_bytes{", job, ",kind=\"peak\"} ", c.staging_peak_bytes, "\n");
  Metric(out, "gradacc_pushes_paused_total", "counter",
         "Times a push stream was paused because the staging pool was full (outcome=paused), and pushes that "
         "stopped waiting after --stall_ms and took a model-sized buffer (outcome=spilled).");
  absl::StrAppend(&out, "gradacc_pushes_paused_total{", job, ",outcome=\"paused\"} ", c.pushes_parked, "\n");
  absl::StrAppend(&out, "gradacc_pushes_paused_total{", job, ",outcome=\"spilled\"} ", c.pushes_spilled, "\n");
  Metric(out, "gradacc_shm_fast_path_pushes_total", "counter",
         "Pushes workers on this host posted to their shared-memory mailbox instead of calling Push (the fast "
         "path; --shm_fast_path).");
  absl::StrAppend(&out, "gradacc_shm_fast_path_pushes_total{", job, "} ", c.fast_path_pushes, "\n");
  Metric(out, "gradacc_step_duration_seconds", "histogram", "From a window's opening to its new version's broadcast.");
  for (size_t i = 0; i < c.step_seconds_bounds.size(); ++i) {
    absl::StrAppend(&out, "gradacc_step_duration_seconds_bucket{", job, ",le=\"", Num(c.step_seconds_bounds[i]),
                    "\"} ", i < c.step_seconds_counts.size() ? c.step_seconds_counts[i] : 0, "\n");
  }
  absl::StrAppend(&out, "gradacc_step_duration_seconds_bucket{", job, ",le=\"+Inf\"} ", c.step_seconds_count, "\n");
  absl::StrAppend(&out, "gradacc_step_duration_seconds_sum{", job, "} ", Num(c.step_seconds_sum), "\n");
  absl::StrAppend(&out, "gradacc_step_duration_seconds_count{", job, "} ", c.step_seconds_count, "\n");
  uint32_t alive = 0, missing = 0, lost = 0;
  for (const auto& w : s.workers()) {
    alive += w.state() == v1::WORKER_STATE_JOINED || w.state() == v1::WORKER_STATE_PUSHED;
    lost += w.state() == v1::WORKER_STATE_LOST;
  }
  missing = s.window().missing_workers_size();
  Metric(out, "gradacc_workers", "gauge", "Workers by state: alive (joined, heard from), lost, missing from the open window.");
  absl::StrAppend(&out, "gradacc_workers{", job, ",state=\"alive\"} ", alive, "\n");
  absl::StrAppend(&out, "gradacc_workers{", job, ",state=\"lost\"} ", lost, "\n");
  absl::StrAppend(&out, "gradacc_workers{", job, ",state=\"missing\"} ", missing, "\n");
  RenderStragglers(out, s, job);
  Metric(out, "gradacc_last_loss", "gauge", "Mean loss per sample of the last closed window.");
  absl::StrAppend(&out, "gradacc_last_loss{", job, "} ", Num(s.last_loss()), "\n");
  Metric(out, "gradacc_learning_rate", "gauge", "Learning rate of the open window.");
  absl::StrAppend(&out, "gradacc_learning_rate{", job, "} ", Num(s.learning_rate()), "\n");
  if (s.test_accuracy() >= 0) {
    Metric(out, "gradacc_test_accuracy_ratio", "gauge", "Last test accuracy reported by a worker.");
    absl::StrAppend(&out, "gradacc_test_accuracy_ratio{", job, "} ", Num(s.test_accuracy()), "\n");
  }
  Metric(out, "gradacc_checkpoint_age_seconds", "gauge", "Seconds since the last checkpoint (-1: none yet).");
  const double age = s.last_checkpoint_unix_micros() == 0
                         ? -1
                         : (absl::ToUnixMicros(absl::Now()) - s.last_checkpoint_unix_micros()) / 1e6;
  absl::StrAppend(&out, "gradacc_checkpoint_age_seconds{", job, "} ", Num(age), "\n");
  if (!s.checkpoint_dir().empty()) {
    Metric(out, "gradacc_checkpoint_healthy", "gauge",
           "0 while checkpoints fail: no new version is published until one succeeds.");
    absl::StrAppend(&out, "gradacc_checkpoint_healthy{", job, "} ", s.checkpoint().healthy() ? 1 : 0, "\n");
    Metric(out, "gradacc_checkpoint_failures_total", "counter", "Checkpoint writes that failed.");
    absl::StrAppend(&out, "gradacc_checkpoint_failures_total{", job, "} ", s.checkpoint().failures(), "\n");
  }
  Metric(out, "gradacc_uptime_seconds", "gauge", "Seconds since the server started.");
  absl::StrAppend(&out, "gradacc_uptime_seconds{", job, "} ", Num(s.uptime_seconds()), "\n");
  return out;
}

std::string JobLabels(const v1::Status& s) {
  std::string labels = absl::StrCat("job=\"", s.job_id(), "\"");
  if (s.num_shards() > 1) absl::StrAppend(&labels, ",shard=\"", s.shard(), "\"");
  return labels;
}

// The metric families of one exposition, in order: a family is its HELP and
// TYPE lines and the samples after them.
struct Family {
  std::string name, head, samples;
};

std::vector<Family> Families(absl::string_view text) {
  std::vector<Family> families;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "# HELP ")) {
      families.push_back({std::string(line.substr(0, line.find(' '))), absl::StrCat("# HELP ", line, "\n"), ""});
    } else if (absl::StartsWith(line, "# ")) {
      if (!families.empty()) absl::StrAppend(&families.back().head, line, "\n");
    } else if (!families.empty()) {
      absl::StrAppend(&families.back().samples, line, "\n");
    }
  }
  return families;
}

}  // namespace

std::string RenderPrometheus(const v1::Status& s, const TrainerCounters& c) { return RenderShard(s, c, JobLabels(s)); }

std::string RenderPrometheus(const std::vector<ShardMetrics>& shards) {
  if (shards.size() == 1) return RenderPrometheus(shards[0].status, shards[0].counters);
  // Families in the order they first appear (a shard may have some the
  // others lack, e.g. a checkpoint directory's).
  std::vector<Family> merged;
  absl::flat_hash_map<std::string, size_t> index;
  for (const ShardMetrics& shard : shards) {
    for (Family& f : Families(RenderShard(shard.status, shard.counters, JobLabels(shard.status)))) {
      auto [it, added] = index.emplace(f.name, merged.size());
      if (added) {
        merged.push_back(std::move(f));
      } else {
        absl::StrAppend(&merged[it->second].samples, f.samples);
      }
    }
  }
  std::string out;
  for (const Family& f : merged) absl::StrAppend(&out, f.head, f.samples);
  return out;
}

}  // namespace gradacc
