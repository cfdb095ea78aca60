// Trainer: closing a window, on the trainer thread — step, make durable,
// publish, log.
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "server/trainer.h"

namespace gradacc {

void Trainer::CloseWindow(ClosingWindow& window) {
  window.sources = accumulator_->Finish(window.window);
  auto report = executor_->Run(window, options_.exchange, [&] { shm_->BeginParamsWrite(window.window); });
  if (!report.ok()) {
    // Only a shutdown abandons a step (nothing changed); its contributions
    // are in no checkpoint and get pushed again after the restart.
    GRADACC_LOG(WARNING, "window %d abandoned: %s", window.window, report.status().message());
    window_.Abandon();
    return;
  }
  const absl::Time stepped = absl::Now();
  const uint64_t version = window.window + 1;
  applied_version_ = version;
  v1::StepRecord record = StepRecordOf(window, *report, stepped);
  std::vector<uint32_t> new_stragglers;
  const bool job_done = window_.Stepped(window, report->grad_norm, report->samples, stepped, &record, &new_stragglers);
  for (uint32_t w : new_stragglers) {
    GRADACC_LOG(WARNING, "worker %d is a STRAGGLER: missing from %d windows in a row (window %d)", w,
                options_.straggler_windows, window.window);
  }
  failpoints_.MaybeKill(Failpoints::Event::kBeforeCheckpoint, window.window);
  if (!MakeDurable(version, job_done, record)) {
    GRADACC_LOG(WARNING,
                "version %d is not published: shutting down before its checkpoint succeeded; its "
                "window is pushed again after the restart",
                version);
    return;
  }
  failpoints_.MaybeKill(Failpoints::Event::kAfterCheckpoint, window.window);
  Publish(window, std::move(record), stepped);
}

v1::StepTiming Trainer::Timing(const ClosingWindow& window, const StepReport& report) const {
  v1::StepTiming t;
  t.set_wait_seconds(absl::ToDoubleSeconds(window.last_arrival - window.opened));
  t.set_reduce_seconds(absl::ToDoubleSeconds(report.reduce_time));
  t.set_apply_seconds(absl::ToDoubleSeconds(report.apply_time));
  return t;
}

v1::CheckpointState Trainer::DurableState(uint64_t version, const v1::StepRecord* record) const {
  v1::CheckpointState s;
  *s.mutable_job() = spec_;
  s.set_version(version);
  window_.Export(version, &s);
  counters_.Export(s.mutable_counters());
  // Pulls through the fast path count as a Pull's (a restarted server
  // starts from what the checkpoint says).
  s.mutable_counters()->set_bytes_sent(s.counters().bytes_sent() + shm_->BellPullBytes());
  for (v1::StepRecord& r : ledger_.Unlogged()) *s.add_unlogged_steps() = std::move(r);
  if (record != nullptr) *s.add_unlogged_steps() = *record;
  s.set_written_unix_micros(absl::ToUnixMicros(absl::Now()));
  s.set_optimizer_steps(executor_->optimizer_steps());
  for (uint64_t steps : executor_->tensor_steps()) s.add_tensor_steps(steps);
  if (executor_->loss_scaler().on()) *s.mutable_loss_scale() = executor_->loss_scaler().Export();
  s.set_shard(options_.shard);
  s.set_num_shards(options_.num_shards);
  s.set_shard_begin(range_.begin);
  s.set_shard_end(range_.end);
  if (options_.exchange != nullptr && version > 0) {
    if (auto part = options_.exchange->Published(version - 1)) *s.mutable_norm_part() = *std::move(part);
  }
  return s;
}

bool Trainer::MakeDurable(uint64_t version, bool job_done, const v1::StepRecord& record) {
  if (!checkpointer_.Due(version, job_done)) return true;
  const v1::CheckpointState state = DurableState(version, &record);
  const auto mid_checkpoint = [this, version] {
    failpoints_.MaybeKill(Failpoints::Event::kMidCheckpoint, version - 1);
  };
  absl::Duration backoff = options_.checkpoint_retry;
  while (true) {
    if (checkpointer_.Write(state, executor_->params(), executor_->OptimizerState(), mid_checkpoint).ok()) {
      return true;
    }
    // Sticky: nothing is published until a write succeeds.
    NotifyListeners();
    if (thread_->Sleep(backoff)) return false;
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
}

bool Trainer::AllOnSharedMemory() const {
  if (!shm_->on()) return false;
  return window_.AllExpected(
      [this](uint32_t i, const WorkerRecord& w) { return w.shared_memory && shm_->Attached(i); });
}

void Trainer::Publish(ClosingWindow& window, v1::StepRecord record, absl::Time stepped) {
  const uint64_t version = window.window + 1;
  SnapshotFields fields{version, false, record.lr(), record.loss(), {}, executor_->loss_scaler().scale(),
                        record.skipped()};
  // The new window opens (pushes for it wait for its version anyway);
  // its plan goes out with the version.
  const LockedWindow::Opened opened =
      window_.Advance(version, fields.loss_scale, absl::Now(), [&] { accumulator_->Open(version); });
  ScheduleDeadline(version, opened.opened);
  fields.job_done = opened.done;
  fields.plan = opened.plan;
  const bool job_done = fields.job_done;
  // The outgoing version's chunks, when no pull holds them, become the new
  // one's (one snapshot's memory, not two); a pull that comes meanwhile is
  // answered with the new version (WithChunks runs on this thread).
  publisher_->Retire();
  // The chunks of a version are built only when a member may pull it
  // through gRPC.
  auto snapshot = MakeSnapshot(layout_, range_, executor_->params(), fields, options_.pull_chunk_elements,
                               !AllOnSharedMemory(), snapshot_memory_);
  shm_->Publish(version);
  if (job_done && !options_.final_params_path.empty()) WriteFinalParameters();
  // The ledger has the step before anyone can see its version.
  LogStep(std::move(record), window.opened, stepped, absl::Now());
  shm_->PublishHeader(snapshot->header.header());
  std::vector<VersionPublisher::Ready> ready = publisher_->Publish(snapshot);
  // mid_broadcast: the version is published and (when anyone was parked)
  // one pull has its answer, the others not yet.
  if (ready.empty()) failpoints_.MaybeKill(Failpoints::Event::kMidBroadcast, window.window);
  for (size_t i = 0; i < ready.size(); ++i) {
    ready[i]();
    if (i == 0) failpoints_.MaybeKill(Failpoints::Event::kMidBroadcast, window.window);
  }
  failpoints_.MaybeKill(Failpoints::Event::kAfterPublish, window.window);
  NotifyListeners();
}

v1::StepRecord Trainer::StepRecordOf(const ClosingWindow& window, const StepReport& report,
                                     absl::Time stepped) const {
  v1::StepRecord record;
  record.set_step(window.window + 1);
  record.set_window(window.window);
  record.set_closed_unix_micros(absl::ToUnixMicros(stepped));
  for (size_t i = 0; i < window.slots.size(); ++i) {
    const Slot& slot = window.slots[i];
    v1::ContributionRecord* c = record.add_contributions();
    c->set_worker(window.workers[i]);
    c->set_window(window.window);
    c->set_contribution_key(slot.key);
    c->set_micro_batches(slot.micro_batches);
    c->set_samples(slot.samples);
    c->set_loss_sum(slot.loss_sum);
    c->set_grad_norm(slot.grad_norm);
    c->set_arrival_unix_micros(absl::ToUnixMicros(slot.arrival));
    c->set_attempt(slot.attempt);
    c->set_duplicates(slot.duplicates);
  }
  record.set_samples(report.samples);
  record.set_loss(report.samples > 0 ? report.loss_sum / static_cast<double>(report.samples) : 0.0);
  record.set_grad_norm(report.grad_norm);
  record.set_grad_norm_clipped(report.clipped_norm);
  record.set_lr(report.lr);
  if (report.skipped) {
    // Nothing was stepped; the record says so once rather than listing
    // every tensor.
    record.set_skipped(true);
  } else {
    for (uint32_t t : report.unstepped) record.add_unstepped_tensors(layout_.tensors()[t].name);
  }
  record.set_loss_scale(report.loss_scale);
  record.set_next_loss_scale(report.next_loss_scale);
  *record.mutable_timing() = Timing(window, report);
  for (uint32_t m : window.missing) record.add_missing_workers(m);
  if (window.plan.id() != 0) *record.mutable_plan() = window.plan;
  return record;
}

void Trainer::LogStep(v1::StepRecord record, absl::Time opened, absl::Time stepped, absl::Time published) {
  record.mutable_timing()->set_broadcast_seconds(absl::ToDoubleSeconds(published - stepped));
  window_.SetLastTiming(record.timing());
  ledger_.Append(std::move(record));
  counters_.StepTook(absl::ToDoubleSeconds(published - opened));
}

void Trainer::WriteFinalParameters() {
  std::vector<NamedTensor> tensors;
  std::map<std::string, std::string> meta = {
      {"job_id", spec_.job_id()}, {"step", absl::StrCat(executor_->optimizer_steps())}, {"format", "pt"}};
  const absl::Span<const float> params = executor_->params();
  if (options_.num_shards > 1) {
    // A shard's part: flat elements [shard_begin, shard_end) of the model.
    tensors.push_back({"shard_params", {range_.size()}, params});
    meta["shard"] = absl::StrCat(options_.shard);
    meta["num_shards"] = absl::StrCat(options_.num_shards);
    meta["shard_begin"] = absl::StrCat(range_.begin);
    meta["shard_end"] = absl::StrCat(range_.end);
  } else {
    for (const ModelLayout::Tensor& t : layout_.tensors()) {
      tensors.push_back({t.name, t.shape, params.subspan(t.offset, t.size)});
    }
  }
  absl::Status s = WriteSafetensorsFile(options_.final_params_path, tensors, meta);
  if (!s.ok()) {
    GRADACC_LOG(WARNING, "cannot write final parameters: %s", s.ToString());
    return;
  }
  GRADACC_LOG(INFO, "final parameters written to %s", options_.final_params_path);
  window_.SetFinalWritten();
}

absl::Status Trainer::CheckpointNow() {
  if (!checkpointer_.enabled()) return absl::OkStatus();
  auto result = std::make_shared<absl::Status>(absl::DeadlineExceededError("the checkpoint did not finish in time"));
  auto mu = std::make_shared<Mutex>();
  thread_->Run(
      [this, result, mu] {
        absl::Status s;
        const uint64_t v = version();
        if (applied_version_ != v) {
          s = absl::FailedPreconditionError(absl::StrFormat(
              "version %d is applied but not durable (checkpoints fail); the checkpoint of version %d stands", v + 1,
              checkpointer_.last_version()));
        } else if (checkpointer_.last_version() != v || !checkpointer_.healthy()) {
          s = checkpointer_.Write(DurableState(v, nullptr), executor_->params(), executor_->OptimizerState());
        }
        MutexLock lock(mu.get());
        *result = s;
      },
      absl::Minutes(2));
  MutexLock lock(mu.get());
  return *result;
}

}  // namespace gradacc
