#include "server/locked_window.h"

#include <utility>

#include "common/log.h"
#include "common/status_macros.h"

namespace gradacc {

LockedWindow::LockedWindow(const v1::JobSpec* spec, uint32_t num_workers, absl::Time started,
                           uint32_t straggler_windows)
    : spec_(spec),
      num_workers_(num_workers),
      started_(started),
      state_(spec, num_workers, started),
      stragglers_(num_workers, straggler_windows) {}

LockedWindow::Opened LockedWindow::OpenedLocked(uint64_t version) const {
  Opened o;
  o.version = version;
  o.done = state_.done();
  o.last_loss = progress_.last_loss();
  o.plan = state_.plan();
  o.opened = state_.window().opened();
  return o;
}

LockedWindow::Opened LockedWindow::Start(float loss_scale, const v1::CheckpointState* restored, const std::string& name,
                                         uint32_t restarts) {
  MutexLock lock(&mu_);
  state_.set_loss_scale(loss_scale);
  if (restored != nullptr) {
    state_.Restore(*restored, started_);
    progress_.Restore(*restored, name, restarts);
  }
  return OpenedLocked(state_.version());
}

absl::StatusOr<JoinOutcome> LockedWindow::Join(const v1::JoinRequest& request, absl::Time now,
                                               v1::JoinResponse* response) {
  MutexLock lock(&mu_);
  GRADACC_ASSIGN_OR_RETURN(JoinOutcome outcome, state_.Join(request, now));
  response->set_job_done(state_.done());
  if (state_.planned()) *response->mutable_plan() = state_.plan();
  if (request.held_version() > outcome.version) {
    progress_.NoteWorkersAhead(request.held_version());
    GRADACC_LOG(ERROR,
                "WORKER %d HOLDS VERSION %d BUT THIS SERVER IS AT VERSION %d: published state "
                "was lost (a restart without the newest checkpoint?); the worker will stop",
                request.worker(), request.held_version(), outcome.version);
  }
  return outcome;
}

absl::Status LockedWindow::Leave(uint32_t worker, absl::Time now, std::optional<ClosingWindow>* closing) {
  MutexLock lock(&mu_);
  return state_.Leave(worker, now, closing);
}

void LockedWindow::SharedMemoryFailed(uint32_t worker, const std::string& why) {
  MutexLock lock(&mu_);
  WorkerRecord& w = state_.members().at(worker);
  w.shm_failure = why.substr(0, 200);
  w.shared_memory = false;
}

void LockedWindow::SharedMemoryOffered(uint32_t worker) {
  MutexLock lock(&mu_);
  state_.members().at(worker).shm_failure.clear();
}

void LockedWindow::CountRejected(uint32_t worker) {
  MutexLock lock(&mu_);
  state_.CountRejected(worker);
}

absl::Status LockedWindow::Admit(const v1::PushHeader& h, absl::Time now, std::optional<LateNote>* late) {
  MutexLock lock(&mu_);
  return state_.Admit(h, now, late);
}

absl::StatusOr<Accepted> LockedWindow::Accept(const v1::PushHeader& h, Slot* slot, bool shared_memory, absl::Time now,
                                              std::optional<LateNote>* late, const std::function<void()>& agree) {
  MutexLock lock(&mu_);
  absl::StatusOr<Accepted> accepted = state_.Accept(h, slot, shared_memory, now, late);
  if (accepted.ok()) agree();
  return accepted;
}

std::optional<ClosingWindow> LockedWindow::TakeAtDeadline(uint64_t window) {
  MutexLock lock(&mu_);
  if (state_.version() != window) return std::nullopt;
  return state_.TakeIfComplete(/*deadline_passed=*/true);
}

void LockedWindow::Seen(uint32_t worker, absl::Time now) {
  MutexLock lock(&mu_);
  state_.members().Seen(worker, now);
}

absl::Status LockedWindow::ParkPull(uint32_t worker, absl::Time now, bool parks, std::optional<uint64_t> pushed_key) {
  MutexLock lock(&mu_);
  state_.members().Seen(worker, now);
  if (parks && pushed_key.has_value()) GRADACC_RETURN_IF_ERROR(state_.CheckHeld(worker, *pushed_key));
  ++state_.members().at(worker).parked_pulls;
  return absl::OkStatus();
}

void LockedWindow::PullAnswered(uint32_t worker, absl::Time now) {
  MutexLock lock(&mu_);
  WorkerRecord& w = state_.members().at(worker);
  if (w.parked_pulls > 0) --w.parked_pulls;
  w.last_seen = now;
}

void LockedWindow::PullCancelled(uint32_t worker) {
  MutexLock lock(&mu_);
  WorkerRecord& w = state_.members().at(worker);
  if (w.parked_pulls > 0) --w.parked_pulls;
}

void LockedWindow::Abandon() {
  MutexLock lock(&mu_);
  state_.Abandon();
}

bool LockedWindow::Stepped(const ClosingWindow& window, float grad_norm, uint64_t samples, absl::Time stepped,
                           v1::StepRecord* record, std::vector<uint32_t>* new_stragglers) {
  MutexLock lock(&mu_);
  progress_.RecordStep(window.window + 1, record->loss(), grad_norm, samples, window.missing, record->timing(),
                       stepped);
  *record->mutable_arrivals() = stragglers_.Observe(window, new_stragglers);
  return state_.DoneAfterClose();
}

LockedWindow::Opened LockedWindow::Advance(uint64_t version, float loss_scale, absl::Time now,
                                           const std::function<void()>& open) {
  MutexLock lock(&mu_);
  const bool done = state_.DoneAfterClose();
  state_.set_loss_scale(loss_scale);
  state_.Advance(version, now);
  open();
  Opened o = OpenedLocked(version);
  o.done = done;
  return o;
}

void LockedWindow::SetLastTiming(const v1::StepTiming& timing) {
  MutexLock lock(&mu_);
  progress_.SetLastTiming(timing);
}

void LockedWindow::SetFinalWritten() {
  MutexLock lock(&mu_);
  progress_.SetFinalWritten();
}

void LockedWindow::RecordAccuracy(uint64_t step, double accuracy) {
  MutexLock lock(&mu_);
  progress_.RecordAccuracy(step, accuracy);
}

void LockedWindow::Export(uint64_t version, v1::CheckpointState* s) const {
  MutexLock lock(&mu_);
  state_.Export(version, s);
  progress_.Export(s);
}

bool LockedWindow::AllExpected(const std::function<bool(uint32_t, const WorkerRecord&)>& pred) const {
  MutexLock lock(&mu_);
  for (uint32_t i = 0; i < num_workers_; ++i) {
    if (state_.window().expected(i) && !pred(i, state_.members().at(i))) return false;
  }
  return true;
}

void LockedWindow::FillWorkers(v1::Status* s, absl::Time now, absl::Duration worker_timeout,
                               const ShmTransport& shm) const {
  const Membership& members = state_.members();
  const Window& window = state_.window();
  for (uint32_t i = 0; i < num_workers_; ++i) {
    const WorkerRecord& w = members.at(i);
    v1::WorkerStatus* ws = s->add_workers();
    ws->set_worker(i);
    ws->set_state(members.Lost(i, now, worker_timeout) ? v1::WORKER_STATE_LOST : w.state);
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
    } else if (w.shared_memory && shm.Attached(i)) {
      ws->set_transport(v1::TRANSPORT_SHARED_MEMORY);
    } else if (w.contributed_ever || !w.shm_failure.empty() || !shm.on()) {
      ws->set_transport(v1::TRANSPORT_GRPC);
    }
  }
}

void LockedWindow::FillStatus(v1::Status* s, absl::Time now, absl::Duration worker_timeout,
                              const ShmTransport& shm) const {
  MutexLock lock(&mu_);
  const uint64_t version = state_.version();
  if (state_.stopping()) {
    s->set_state(v1::JOB_STATE_STOPPING);
  } else if (state_.done()) {
    s->set_state(v1::JOB_STATE_DONE);
  } else {
    s->set_state(state_.members().AnyJoined() ? v1::JOB_STATE_RUNNING : v1::JOB_STATE_WAITING);
  }
  s->set_step(version);
  s->set_version(version);
  v1::WindowProgress* wp = s->mutable_window();
  const Window& window = state_.window();
  wp->set_window(version);
  wp->set_contributions_received(window.received());
  wp->set_contributions_expected(window.expected_count());
  wp->set_samples_received(window.samples());
  wp->set_samples_expected(uint64_t{spec_->window().num_workers()} * spec_->window().micro_batches() *
                           spec_->window().micro_batch_size());
  wp->set_opened_unix_micros(absl::ToUnixMicros(window.opened()));
  if (!state_.done() && !state_.closing()) {
    for (uint32_t m : window.Missing()) wp->add_missing_workers(m);
  }
  FillWorkers(s, now, worker_timeout, shm);
  progress_.Fill(s);
  stragglers_.Fill(s);
  s->set_contributions_accepted(state_.accepted());
  s->set_contributions_duplicate(state_.duplicates());
  s->set_contributions_stale(state_.stale());
  s->set_contributions_rejected(state_.rejected());
  s->set_members(state_.members().ActiveMembers());
}

uint64_t LockedWindow::AddListener(Listener listener) {
  MutexLock lock(&mu_);
  const uint64_t id = next_listener_id_++;
  listeners_[id] = std::make_shared<Listener>(std::move(listener));
  return id;
}

void LockedWindow::RemoveListener(uint64_t id) {
  MutexLock lock(&mu_);
  listeners_.erase(id);
}

std::vector<std::shared_ptr<LockedWindow::Listener>> LockedWindow::Listeners() const {
  MutexLock lock(&mu_);
  std::vector<std::shared_ptr<Listener>> out;
  out.reserve(listeners_.size());
  for (const auto& [id, l] : listeners_) out.push_back(l);
  return out;
}

bool LockedWindow::Stop() {
  MutexLock lock(&mu_);
  if (state_.stopping()) return false;
  state_.Stop();
  return true;
}

uint64_t LockedWindow::version() const {
  MutexLock lock(&mu_);
  return state_.version();
}

bool LockedWindow::done() const {
  MutexLock lock(&mu_);
  return state_.done();
}

}  // namespace gradacc
