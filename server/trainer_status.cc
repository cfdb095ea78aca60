// Trainer: the status of the job, as data (formatting is the client's).
#include "absl/strings/str_cat.h"
#include "server/lr_schedule.h"
#include "server/trainer.h"

namespace gradacc {
namespace {

// The file name of a path: status does not show the server's folders.
std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

void Trainer::FillWorkers(v1::Status* s, absl::Time now) const {
  const Membership& members = state_.members();
  const Window& window = state_.window();
  for (uint32_t i = 0; i < num_workers_; ++i) {
    const WorkerRecord& w = members.at(i);
    v1::WorkerStatus* ws = s->add_workers();
    ws->set_worker(i);
    ws->set_state(members.Lost(i, now, options_.worker_timeout) ? v1::WORKER_STATE_LOST : w.state);
    ws->set_member(w.member);
    ws->set_expected_in_window(window.expected(i));
    ws->set_hostname(w.hostname);
    ws->set_last_seen_unix_micros(w.last_seen == absl::InfinitePast() ? 0 : absl::ToUnixMicros(w.last_seen));
    ws->set_contributions(w.contributions);
    ws->set_duplicates(w.duplicates);
    ws->set_rejected(w.rejected);
    ws->set_stale(w.stale);
    ws->set_late_windows(stragglers_.late_windows(i));
    ws->set_straggler(stragglers_.straggler(i));
    ws->set_last_window(w.last_window);
    ws->set_covered_by(w.covered_by);
    ws->set_shared_memory_failure(w.shm_failure);
    if (w.covered_by >= 0) {
      ws->set_transport(v1::TRANSPORT_HIERARCHICAL);
    } else if (w.shared_memory && shm_->Attached(i)) {
      ws->set_transport(v1::TRANSPORT_SHARED_MEMORY);
    } else if (w.contributed_ever || !w.shm_failure.empty() || !shm_->on()) {
      ws->set_transport(v1::TRANSPORT_GRPC);
    }
  }
}

v1::Status Trainer::GetStatus() const {
  v1::Status s;
  const absl::Time now = absl::Now();
  *s.mutable_checkpoint() = checkpointer_.health();
  s.set_last_checkpoint_step(checkpointer_.last_version());
  const absl::Time checkpointed = checkpointer_.last_time();
  s.set_last_checkpoint_unix_micros(checkpointed == absl::InfinitePast() ? 0 : absl::ToUnixMicros(checkpointed));
  MutexLock lock(&mu_);
  s.set_job_id(spec_.job_id());
  const uint64_t version = state_.version();
  if (state_.stopping()) {
    s.set_state(v1::JOB_STATE_STOPPING);
  } else if (state_.done()) {
    s.set_state(v1::JOB_STATE_DONE);
  } else {
    s.set_state(state_.members().AnyJoined() ? v1::JOB_STATE_RUNNING : v1::JOB_STATE_WAITING);
  }
  s.set_step(version);
  s.set_version(version);
  s.set_total_steps(spec_.total_steps());
  v1::WindowProgress* wp = s.mutable_window();
  const Window& window = state_.window();
  wp->set_window(version);
  wp->set_contributions_received(window.received());
  wp->set_contributions_expected(window.expected_count());
  wp->set_samples_received(window.samples());
  wp->set_samples_expected(uint64_t{spec_.window().num_workers()} * spec_.window().micro_batches() *
                           spec_.window().micro_batch_size());
  wp->set_opened_unix_micros(absl::ToUnixMicros(window.opened()));
  if (!state_.done() && !state_.closing()) {
    for (uint32_t m : window.Missing()) wp->add_missing_workers(m);
  }
  FillWorkers(&s, now);
  progress_.Fill(&s);
  stragglers_.Fill(&s);
  s.set_optimizer(spec_.optimizer().kind());
  s.set_learning_rate(LearningRateAt(spec_.optimizer(), spec_.schedule(), version));
  s.set_uptime_seconds(absl::ToDoubleSeconds(now - started_));
  s.set_reduction(spec_.reduction());
  s.set_num_elements(layout_.num_elements());
  s.set_shard(options_.shard);
  s.set_num_shards(options_.num_shards);
  s.set_shard_begin(range_.begin);
  s.set_shard_end(range_.end);
  s.set_server_time_unix_micros(absl::ToUnixMicros(now));
  s.set_contributions_accepted(state_.accepted());
  s.set_contributions_duplicate(state_.duplicates());
  s.set_contributions_stale(state_.stale());
  s.set_contributions_rejected(state_.rejected());
  s.set_final_params_path(BaseName(options_.final_params_path));
  s.set_policy(spec_.window().policy());
  s.set_members(state_.members().ActiveMembers());
  s.set_checkpoint_dir(options_.checkpoint_dir.empty() ? "" : BaseName(options_.checkpoint_dir));
  s.set_shared_memory_off_reason(shm_->on() ? "" : shm_->off_reason());
  s.set_pushes_in_flight(static_cast<uint32_t>(pool_.inflight()));
  return s;
}

TrainerCounters Trainer::Counters() const {
  TrainerCounters c = counters_.Snapshot();
  c.bytes_sent += shm_->BellPullBytes();  // pulls through the fast path
  const AccumulatorStats a = accumulator_->stats();
  c.staging_bytes = a.staged_bytes;
  c.staging_peak_bytes = a.staged_peak_bytes;
  c.pushes_parked = a.parked;
  c.pushes_spilled = a.spilled;
  c.fast_path_pushes = fast_path_ != nullptr ? fast_path_->requests() : 0;
  return c;
}

}  // namespace gradacc
