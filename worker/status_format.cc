#include "worker/status_format.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"

namespace gradacc {
namespace {

std::string Name(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_WAITING: return "waiting for workers";
    case v1::JOB_STATE_RUNNING: return "running";
    case v1::JOB_STATE_DONE: return "done";
    case v1::JOB_STATE_STOPPING: return "stopping";
    default: return "unknown";
  }
}

std::string Name(v1::WorkerState s) {
  switch (s) {
    case v1::WORKER_STATE_NEVER_JOINED: return "never joined";
    case v1::WORKER_STATE_JOINED: return "computing";
    case v1::WORKER_STATE_PUSHED: return "pushed";
    case v1::WORKER_STATE_LEFT: return "left";
    default: return "unknown";
  }
}

std::string Name(v1::OptimizerSpec::Kind k) {
  switch (k) {
    case v1::OptimizerSpec::KIND_ADAM: return "Adam";
    case v1::OptimizerSpec::KIND_ADAMW: return "AdamW";
    default: return "SGD";
  }
}

std::string Name(v1::Reduction r) {
  switch (r) {
    case v1::REDUCTION_MEAN_OVER_CONTRIBUTIONS: return "mean over contributions";
    case v1::REDUCTION_SUM: return "sum";
    default: return "mean over samples";
  }
}

std::string Ago(int64_t then_us, int64_t now_us) {
  if (then_us == 0) return "-";
  const double s = static_cast<double>(now_us - then_us) / 1e6;
  if (s < 1) return absl::StrFormat("%.0f ms ago", s * 1e3);
  if (s < 120) return absl::StrFormat("%.1f s ago", s);
  return absl::StrFormat("%.0f min ago", s / 60);
}

std::string Duration(double seconds) {
  if (seconds < 1e-3) return absl::StrFormat("%.0f us", seconds * 1e6);
  if (seconds < 1) return absl::StrFormat("%.1f ms", seconds * 1e3);
  return absl::StrFormat("%.2f s", seconds);
}

// How a worker's data moves, as `gradacc status` has always shown it.
std::string TransportText(const v1::Status& s, const v1::WorkerStatus& ws) {
  switch (ws.transport()) {
    case v1::TRANSPORT_HIERARCHICAL:
      return absl::StrFormat("via worker %d (hierarchical)", ws.covered_by());
    case v1::TRANSPORT_SHARED_MEMORY:
      return "shared memory";
    case v1::TRANSPORT_GRPC:
      if (!ws.shared_memory_failure().empty()) {
        return absl::StrCat("gRPC (shared memory failed: ", ws.shared_memory_failure(), ")");
      }
      if (!s.shared_memory_off_reason().empty()) {
        return absl::StrCat("gRPC (no shared memory: ", s.shared_memory_off_reason(), ")");
      }
      return "gRPC";
    default:
      return "-";
  }
}

}  // namespace

std::string FormatStatusTable(const v1::Status& s) {
  std::string out;
  const double pct = s.total_steps() ? 100.0 * static_cast<double>(s.step()) / static_cast<double>(s.total_steps()) : 0;
  absl::StrAppendFormat(&out, "job          %s  (%s)\n", s.job_id(), Name(s.state()));
  absl::StrAppendFormat(&out, "step         %d / %d  (%.1f%%)\n", s.step(), s.total_steps(), pct);
  const auto& w = s.window();
  std::vector<std::string> missing;
  for (uint32_t m : w.missing_workers()) missing.push_back(absl::StrCat(m));
  absl::StrAppendFormat(&out, "window       %d: %d/%d contributions, %d", w.window(), w.contributions_received(),
                        w.contributions_expected(), w.samples_received());
  if (w.samples_expected() > 0) absl::StrAppendFormat(&out, "/%d", w.samples_expected());
  absl::StrAppendFormat(&out, " samples%s\n",
                        missing.empty() ? "" : absl::StrCat("; waiting for worker(s) ", absl::StrJoin(missing, ",")));
  absl::StrAppendFormat(&out, "loss         %.4f", s.last_loss());
  if (s.loss_history_size() > 1) {
    absl::StrAppendFormat(&out, "  (step %d: %.4f)", s.loss_history(0).step(), s.loss_history(0).loss());
  }
  out += "\n";
  if (s.test_accuracy() >= 0) {
    absl::StrAppendFormat(&out, "test acc     %.2f%%  (at step %d)\n", 100 * s.test_accuracy(), s.test_accuracy_step());
  }
  absl::StrAppendFormat(&out, "throughput   %.1f samples/s, %.2f steps/s\n", s.samples_per_second(),
                        s.steps_per_second());
  absl::StrAppendFormat(&out, "optimizer    %s, lr %.6g, %s, %d parameters\n", Name(s.optimizer()),
                        s.learning_rate(), Name(s.reduction()), s.num_elements());
  const auto& t = s.last_step();
  absl::StrAppendFormat(&out, "last step    wait %s | reduce %s | apply %s | broadcast %s\n",
                        Duration(t.wait_seconds()), Duration(t.reduce_seconds()), Duration(t.apply_seconds()),
                        Duration(t.broadcast_seconds()));
  absl::StrAppendFormat(&out, "pushes       %d accepted, %d duplicate, %d stale, %d rejected\n",
                        s.contributions_accepted(), s.contributions_duplicate(), s.contributions_stale(),
                        s.contributions_rejected());
  absl::StrAppendFormat(&out, "uptime       %s\n", absl::FormatDuration(absl::Seconds(static_cast<int64_t>(s.uptime_seconds()))));
  absl::StrAppendFormat(&out, "\n%-7s %-13s %-16s %-13s %9s %5s %5s %-11s %s\n", "WORKER", "STATE", "HOST",
                        "LAST SEEN", "PUSHES", "DUPS", "REJ", "LAST WINDOW", "TRANSPORT");
  for (const v1::WorkerStatus& ws : s.workers()) {
    absl::StrAppendFormat(&out, "%-7d %-13s %-16s %-13s %9d %5d %5d %-11d %s\n", ws.worker(), Name(ws.state()),
                          ws.hostname().empty() ? "-" : ws.hostname().substr(0, 16),
                          Ago(ws.last_seen_unix_micros(), s.server_time_unix_micros()), ws.contributions(),
                          ws.duplicates(), ws.rejected(), ws.last_window(),
                          TransportText(s, ws));
  }
  return out;
}

std::string FormatStepsTable(const v1::GetStepsResponse& steps) {
  std::string out = absl::StrFormat("%6s %8s %9s %10s %10s %10s %9s %9s %9s %9s %-12s %-8s %s\n", "STEP", "SAMPLES",
                                    "LOSS", "GRAD NORM", "CLIPPED", "LR", "WAIT", "REDUCE", "APPLY", "BCAST",
                                    "WORKERS", "MISSING", "LATE");
  for (const v1::StepRecord& r : steps.steps()) {
    std::vector<std::string> workers, missing, late;
    for (const auto& c : r.contributions()) {
      std::string w = absl::StrCat(c.worker());
      if (c.attempt() > 1) absl::StrAppend(&w, "(try ", c.attempt(), ")");
      if (c.duplicates() > 0) absl::StrAppend(&w, "+", c.duplicates(), "dup");
      workers.push_back(w);
    }
    for (uint32_t m : r.missing_workers()) missing.push_back(absl::StrCat(m));
    for (const auto& l : r.late()) late.push_back(absl::StrCat(l.worker(), ":", l.outcome()));
    absl::StrAppendFormat(&out, "%6d %8d %9.4f %10.4g %10.4g %10.4g %9s %9s %9s %9s %-12s %-8s %s\n", r.step(),
                          r.samples(), r.loss(), r.grad_norm(), r.grad_norm_clipped(), r.lr(),
                          Duration(r.timing().wait_seconds()), Duration(r.timing().reduce_seconds()),
                          Duration(r.timing().apply_seconds()), Duration(r.timing().broadcast_seconds()),
                          absl::StrJoin(workers, ","), missing.empty() ? "-" : absl::StrJoin(missing, ","),
                          late.empty() ? "-" : absl::StrJoin(late, ","));
  }
  if (steps.steps_size() == 0) out += "(no steps recorded)\n";
  return out;
}

}  // namespace gradacc
