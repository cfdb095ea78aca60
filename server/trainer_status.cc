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

v1::Status Trainer::GetStatus() const {
  v1::Status s;
  const absl::Time now = absl::Now();
  *s.mutable_checkpoint() = checkpointer_.health();
  s.set_last_checkpoint_step(checkpointer_.last_version());
  const absl::Time checkpointed = checkpointer_.last_time();
  s.set_last_checkpoint_unix_micros(checkpointed == absl::InfinitePast() ? 0 : absl::ToUnixMicros(checkpointed));
  window_.FillStatus(&s, now, options_.worker_timeout, *shm_);
  const uint64_t version = s.version();
  s.set_job_id(spec_.job_id());
  s.set_total_steps(spec_.total_steps());
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
  s.set_final_params_path(BaseName(options_.final_params_path));
  s.set_policy(spec_.window().policy());
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
