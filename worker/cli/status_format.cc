#include "worker/cli/status_format.h"

#include <algorithm>
#include <initializer_list>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "google/protobuf/descriptor.h"

namespace gradacc {
namespace {

// The label of an enum value: the word users know when `words` has one,
// else the generated name without its prefix ("WORKER_STATE_LOST" ->
// "lost"), so a value added to the proto later still reads as itself; a
// number no descriptor knows (a newer server) as "unknown (N)".
template <typename E>
std::string EnumLabel(E value, const google::protobuf::EnumDescriptor* descriptor, absl::string_view prefix,
                      std::initializer_list<std::pair<E, const char*>> words) {
  for (const auto& [known, word] : words) {
    if (known == value) return word;
  }
  const google::protobuf::EnumValueDescriptor* v = descriptor->FindValueByNumber(static_cast<int>(value));
  if (v == nullptr) return absl::StrCat("unknown (", static_cast<int>(value), ")");
  std::string name = v->name();
  if (absl::StartsWith(name, prefix)) name.erase(0, prefix.size());
  return absl::StrReplaceAll(absl::AsciiStrToLower(name), {{"_", " "}});
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

// A failing checkpoint always carries its error; an older server that sends
// no CheckpointHealth at all is not "failing".
bool CheckpointsFailing(const v1::Status& s) {
  const v1::CheckpointHealth& c = s.checkpoint();
  return !c.healthy() && (!c.error().empty() || c.failing_since_unix_micros() != 0);
}

std::string ProgressLines(const v1::Status& s) {
  std::string out;
  const double pct = s.total_steps() ? 100.0 * static_cast<double>(s.step()) / static_cast<double>(s.total_steps()) : 0;
  absl::StrAppendFormat(&out, "job          %s  (%s)\n", s.job_id(), JobStateLabel(s.state()));
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
  return out;
}

std::string ServerLines(const v1::Status& s) {
  std::string out;
  absl::StrAppendFormat(&out, "throughput   %.1f samples/s, %.2f steps/s\n", s.samples_per_second(),
                        s.steps_per_second());
  absl::StrAppendFormat(&out, "optimizer    %s, lr %.6g, %s, %d parameters\n", OptimizerLabel(s.optimizer()),
                        s.learning_rate(), ReductionLabel(s.reduction()), s.num_elements());
  const auto& t = s.last_step();
  absl::StrAppendFormat(&out, "last step    wait %s | reduce %s | apply %s | broadcast %s\n",
                        Duration(t.wait_seconds()), Duration(t.reduce_seconds()), Duration(t.apply_seconds()),
                        Duration(t.broadcast_seconds()));
  absl::StrAppendFormat(&out, "pushes       %d accepted, %d duplicate, %d stale, %d rejected\n",
                        s.contributions_accepted(), s.contributions_duplicate(), s.contributions_stale(),
                        s.contributions_rejected());
  const std::string slowest = SlowestLabel(s.last_window_arrivals());
  if (!slowest.empty()) absl::StrAppendFormat(&out, "slowest      %s\n", slowest);
  const std::string checkpoint = CheckpointLabel(s);
  if (!checkpoint.empty()) absl::StrAppendFormat(&out, "checkpoint   %s\n", checkpoint);
  for (const v1::ShardSummary& shard : s.shards()) {
    if (shard.reachable()) {
      absl::StrAppendFormat(&out, "shard %-6d %s  step %d, window %d/%d, elements [%d, %d)\n", shard.shard(),
                            shard.address(), shard.step(), shard.contributions_received(),
                            shard.contributions_expected(), shard.shard_begin(), shard.shard_end());
    } else {
      absl::StrAppendFormat(&out, "shard %-6d %s  NOT REACHABLE%s: %s\n", shard.shard(), shard.address(),
                            shard.away_since_unix_micros() != 0
                                ? " since " + Ago(shard.away_since_unix_micros(), s.server_time_unix_micros())
                                : "",
                            shard.error());
    }
  }
  absl::StrAppendFormat(&out, "uptime       %s\n",
                        absl::FormatDuration(absl::Seconds(static_cast<int64_t>(s.uptime_seconds()))));
  return out;
}

std::string WorkerLines(const v1::Status& s) {
  std::string out = absl::StrFormat("%-7s %-13s %-16s %-13s %9s %5s %5s %-11s %s\n", "WORKER", "STATE", "HOST",
                                    "LAST SEEN", "PUSHES", "DUPS", "REJ", "LAST WINDOW", "TRANSPORT");
  for (const v1::WorkerStatus& ws : s.workers()) {
    absl::StrAppendFormat(&out, "%-7d %-13s %-16s %-13s %9d %5d %5d %-11d %s\n", ws.worker(),
                          WorkerStateLabel(ws.state()), ws.hostname().empty() ? "-" : ws.hostname().substr(0, 16),
                          Ago(ws.last_seen_unix_micros(), s.server_time_unix_micros()), ws.contributions(),
                          ws.duplicates(), ws.rejected(), ws.last_window(), TransportLabel(ws, s));
  }
  return out;
}

}  // namespace

std::string JobStateLabel(v1::JobState state) {
  return EnumLabel(state, v1::JobState_descriptor(), "JOB_STATE_", {{v1::JOB_STATE_WAITING, "waiting for workers"}});
}

std::string WorkerStateLabel(v1::WorkerState state) {
  return EnumLabel(state, v1::WorkerState_descriptor(), "WORKER_STATE_", {{v1::WORKER_STATE_JOINED, "computing"}});
}

std::string OptimizerLabel(v1::OptimizerSpec::Kind kind) {
  return EnumLabel(kind, v1::OptimizerSpec::Kind_descriptor(), "KIND_",
                   {{v1::OptimizerSpec::KIND_UNSPECIFIED, "SGD"},
                    {v1::OptimizerSpec::KIND_SGD, "SGD"},
                    {v1::OptimizerSpec::KIND_ADAM, "Adam"},
                    {v1::OptimizerSpec::KIND_ADAMW, "AdamW"}});
}

std::string ReductionLabel(v1::Reduction reduction) {
  return EnumLabel(reduction, v1::Reduction_descriptor(), "REDUCTION_", {});
}

std::string TransportLabel(const v1::WorkerStatus& w, const v1::Status& s) {
  switch (w.transport()) {
    case v1::TRANSPORT_UNSPECIFIED:
      return "-";
    case v1::TRANSPORT_HIERARCHICAL:
      return w.covered_by() >= 0 ? absl::StrFormat("via worker %d (hierarchical)", w.covered_by())
                                 : "via another worker (hierarchical)";
    case v1::TRANSPORT_SHARED_MEMORY:
      return "shared memory";
    case v1::TRANSPORT_GRPC:
      if (!w.shared_memory_failure().empty())
        return absl::StrCat("gRPC (shared memory failed: ", w.shared_memory_failure(), ")");
      if (!s.shared_memory_off_reason().empty())
        return absl::StrCat("gRPC (no shared memory: ", s.shared_memory_off_reason(), ")");
      return "gRPC";
    default:
      return EnumLabel(w.transport(), v1::Transport_descriptor(), "TRANSPORT_", {});
  }
}

std::string CheckpointLabel(const v1::Status& s) {
  const v1::CheckpointHealth& c = s.checkpoint();
  if (CheckpointsFailing(s)) {
    std::string out = absl::StrFormat("FAILING since %s (%d failed writes): %s",
                                      Ago(c.failing_since_unix_micros(), s.server_time_unix_micros()), c.failures(),
                                      c.error().empty() ? "no error given" : c.error());
    if (c.pending_version() > 0) {
      absl::StrAppendFormat(&out, "; version %d waits for its checkpoint before it is published", c.pending_version());
    }
    return out;
  }
  if (s.checkpoint_dir().empty() && c.failures() == 0) return "";
  std::string out = s.last_checkpoint_step() > 0
                        ? absl::StrFormat("step %d (%s)", s.last_checkpoint_step(),
                                          Ago(s.last_checkpoint_unix_micros(), s.server_time_unix_micros()))
                        : std::string("none yet");
  if (!s.checkpoint_dir().empty()) absl::StrAppend(&out, " in ", s.checkpoint_dir());
  if (c.failures() > 0) absl::StrAppendFormat(&out, "; %d failed writes earlier", c.failures());
  if (!s.restored_from().empty()) {
    absl::StrAppendFormat(&out, "; resumed from %s (%d restarts)", s.restored_from(), s.server_restarts());
  }
  return out;
}

std::string SlowestLabel(const v1::WindowArrivals& a) {
  if (a.slowest_worker() < 0) return "";
  return absl::StrFormat("worker %d in window %d: %s%s behind the median arrival (%s after the opening)%s",
                         a.slowest_worker(), a.window(), a.slowest_missing() ? "missing, over " : "",
                         Duration(a.slowest_behind_median_seconds()), Duration(a.median_after_open_seconds()),
                         a.stragglers_size() > 0 ? absl::StrCat("; stragglers: ", absl::StrJoin(a.stragglers(), ","))
                                                 : "");
}

std::string StragglerLabel(const v1::WorkerStatus& w) {
  if (w.straggler()) return absl::StrFormat("straggler: missing from %d windows in a row", w.late_windows());
  if (w.late_windows() > 0) return absl::StrFormat("missing from the last %d window(s)", w.late_windows());
  return "";
}

std::vector<std::string> StatusAlerts(const v1::Status& s) {
  std::vector<std::string> alerts;
  if (CheckpointsFailing(s)) {
    alerts.push_back(
        absl::StrCat("CHECKPOINTS FAILING: no new version is published until one succeeds (", CheckpointLabel(s), ")"));
  }
  if (s.workers_ahead_version() > s.version()) {
    alerts.push_back(absl::StrFormat(
        "SERVER BEHIND ITS WORKERS: a worker holds version %d but this server is at version %d (it lost state it "
        "had published)",
        s.workers_ahead_version(), s.version()));
  }
  for (const v1::ShardSummary& shard : s.shards()) {
    if (shard.reachable()) continue;
    alerts.push_back(absl::StrFormat("SHARD AWAY: shard %d (%s) does not answer%s (%s); the job cannot step until it "
                                     "is back (restart it with the same flags)",
                                     shard.shard(), shard.address(),
                                     shard.away_since_unix_micros() != 0
                                         ? " since " + Ago(shard.away_since_unix_micros(), s.server_time_unix_micros())
                                         : "",
                                     shard.error()));
  }
  if (s.stragglers_size() > 0) {
    std::vector<std::string> named;
    for (const v1::WorkerStatus& w : s.workers()) {
      if (w.straggler()) named.push_back(absl::StrFormat("worker %d (%d windows)", w.worker(), w.late_windows()));
    }
    alerts.push_back(absl::StrFormat("STRAGGLERS: %s missing from %d or more windows in a row",
                                     absl::StrJoin(named, ", "), s.straggler_windows()));
  }
  return alerts;
}

std::string FormatStatusTable(const v1::Status& s) {
  std::string out;
  for (const std::string& alert : StatusAlerts(s)) absl::StrAppend(&out, "!! ", alert, "\n");
  absl::StrAppend(&out, ProgressLines(s), ServerLines(s), "\n", WorkerLines(s));
  return out;
}

std::string FormatStepsTable(const v1::GetStepsResponse& steps) {
  std::string out =
      absl::StrFormat("%6s %8s %9s %10s %10s %10s %9s %9s %9s %9s %-12s %-8s %-20s %s\n", "STEP", "SAMPLES", "LOSS",
                      "GRAD NORM", "CLIPPED", "LR", "WAIT", "REDUCE", "APPLY", "BCAST", "WORKERS", "MISSING", "LATE",
                      "SLOWEST");
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
    const v1::WindowArrivals& a = r.arrivals();
    const std::string slowest =
        a.slowest_worker() < 0 ? "-"
                               : absl::StrCat(a.slowest_worker(), a.slowest_missing() ? " missing, +" : " +",
                                              Duration(a.slowest_behind_median_seconds()));
    absl::StrAppendFormat(&out, "%6d %8d %9.4f %10.4g %10.4g %10.4g %9s %9s %9s %9s %-12s %-8s %-20s %s\n", r.step(),
                          r.samples(), r.loss(), r.grad_norm(), r.grad_norm_clipped(), r.lr(),
                          Duration(r.timing().wait_seconds()), Duration(r.timing().reduce_seconds()),
                          Duration(r.timing().apply_seconds()), Duration(r.timing().broadcast_seconds()),
                          absl::StrJoin(workers, ","), missing.empty() ? "-" : absl::StrJoin(missing, ","),
                          late.empty() ? "-" : absl::StrJoin(late, ","), slowest);
  }
  if (steps.steps_size() == 0) out += "(no steps recorded)\n";
  return out;
}

google::protobuf::Struct StatusDisplay(const v1::Status& s) {
  google::protobuf::Struct display;
  auto& fields = *display.mutable_fields();
  fields["state"].set_string_value(JobStateLabel(s.state()));
  fields["checkpoint"].set_string_value(CheckpointLabel(s));
  fields["slowest"].set_string_value(SlowestLabel(s.last_window_arrivals()));
  auto* alerts = fields["alerts"].mutable_list_value();
  for (const std::string& alert : StatusAlerts(s)) alerts->add_values()->set_string_value(alert);
  auto* workers = fields["workers"].mutable_list_value();
  for (const v1::WorkerStatus& w : s.workers()) {
    auto& row = *workers->add_values()->mutable_struct_value()->mutable_fields();
    row["worker"].set_number_value(w.worker());
    row["state"].set_string_value(WorkerStateLabel(w.state()));
    row["transport"].set_string_value(TransportLabel(w, s));
    row["straggler"].set_string_value(StragglerLabel(w));
  }
  return display;
}

}  // namespace gradacc
