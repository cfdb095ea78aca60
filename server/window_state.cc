#include "server/window_state.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errors.h"
#include "common/log.h"

namespace gradacc {
namespace {

std::string Str(uint64_t v) { return absl::StrCat(v); }

absl::Status ShuttingDown() { return Refusal(v1::ERROR_REASON_SHUTTING_DOWN, "server is shutting down"); }

}  // namespace

WindowState::WindowState(const v1::JobSpec* spec, uint32_t num_workers, absl::Time now)
    : spec_(spec),
      members_(num_workers, spec->window().max_workers() > 0),
      ledger_(num_workers),
      window_(num_workers) {
  window_.Open(0, ExpectedNext(), now);
  Replan();
}

void WindowState::Replan() {
  if (!planned()) return;
  std::vector<uint32_t> members;
  for (uint32_t i = 0; i < members_.size(); ++i) {
    if (window_.expected(i)) members.push_back(i);
  }
  plan_ = PlanWindow(*spec_, version_, cursor_, members);
}

std::vector<bool> WindowState::ExpectedNext() const {
  std::vector<bool> expected(members_.size(), true);
  if (!members_.elastic()) return expected;
  for (uint32_t i = 0; i < members_.size(); ++i) {
    expected[i] = members_.at(i).member && members_.at(i).state != v1::WORKER_STATE_LEFT;
  }
  return expected;
}

void WindowState::Restore(const v1::CheckpointState& s, absl::Time now) {
  version_ = s.version();
  for (const v1::CheckpointWorker& cw : s.workers()) {
    if (cw.worker() >= members_.size()) continue;
    WorkerRecord& w = members_.at(cw.worker());
    // With a data plan nobody is a member after a restart: every worker
    // joins again, so ranks that never come back do not hold the job up.
    w.member = members_.elastic() ? cw.member() && !planned() : true;
    // Joined workers stay joined: they reconnect and carry on. Whether they
    // are alive shows in their last-seen time.
    w.state = cw.state() == v1::WORKER_STATE_PUSHED || cw.state() == v1::WORKER_STATE_LOST
                  ? v1::WORKER_STATE_JOINED
                  : cw.state();
    w.hostname = cw.hostname();
    w.contributions = cw.contributions();
    w.duplicates = cw.duplicates();
    w.rejected = cw.rejected();
    w.stale = cw.stale();
    w.last_window = cw.last_window();
    w.contributed_ever = cw.contributions() > 0;
    w.last_seen = now;
    ledger_.Import(cw.worker(), cw.applied_keys());
  }
  accepted_ = s.counters().accepted();
  duplicates_ = s.counters().duplicate();
  stale_ = s.counters().stale();
  rejected_ = s.counters().rejected();
  cursor_ = {s.plan_epoch(), s.plan_offset()};
  window_.Open(version_, ExpectedNext(), now);
  Replan();
}

void WindowState::Export(uint64_t version, v1::CheckpointState* s) const {
  uint64_t left_out = 0;
  for (uint32_t i = 0; i < members_.size(); ++i) {
    const WorkerRecord& w = members_.at(i);
    if (w.state == v1::WORKER_STATE_NEVER_JOINED && ledger_.empty(i)) continue;
    // Contributions to windows the checkpoint does not hold (the open or
    // closing one, at a shutdown) are pushed and counted again.
    const uint64_t not_held = ledger_.CountFrom(i, version);
    left_out += not_held;
    v1::CheckpointWorker* cw = s->add_workers();
    cw->set_worker(i);
    cw->set_member(w.member);
    cw->set_state(w.state);
    cw->set_hostname(w.hostname);
    cw->set_contributions(w.contributions - std::min(w.contributions, not_held));
    cw->set_last_window(w.last_window);
    cw->set_duplicates(w.duplicates);
    cw->set_rejected(w.rejected);
    cw->set_stale(w.stale);
    ledger_.Export(i, version, cw->mutable_applied_keys());
  }
  v1::CheckpointCounters* c = s->mutable_counters();
  c->set_accepted(accepted_ - std::min(accepted_, left_out));
  c->set_duplicate(duplicates_);
  c->set_stale(stale_);
  c->set_rejected(rejected_);
  if (planned()) {
    const EpochCursor c = closing_ && version == version_ + 1 ? CursorAfter(*spec_, plan_) : cursor_;
    s->set_plan_epoch(c.epoch);
    s->set_plan_offset(c.offset);
  }
}

absl::StatusOr<JoinOutcome> WindowState::Join(const v1::JoinRequest& request, absl::Time now) {
  if (stopping_) return ShuttingDown();
  const uint32_t id = request.worker();
  members_.Join(id, {request.covers().begin(), request.covers().end()}, request.hostname(), now,
                [this](uint32_t i) { return window_.has(i); });
  JoinOutcome out{version_, version_};
  WorkerRecord& w = members_.at(id);
  if (planned() && !w.member) {
    JoinPlanned(id, &out);
  } else if (members_.elastic() && !w.member) {
    w.member = true;
    // Joining a window nobody has contributed to yet joins it; otherwise
    // the worker's first window is the next one.
    if (window_.received() == 0 && !closing_) {
      window_.Expect(id, true);
    } else if (!window_.expected(id)) {
      out.first_window = version_ + 1;
    }
  } else if (members_.elastic() && !window_.expected(id) && !window_.has(id)) {
    out.first_window = version_ + 1;
  }
  return out;
}

void WindowState::JoinPlanned(uint32_t worker, JoinOutcome* out) {
  members_.at(worker).member = true;
  if (window_.expected_count() == 0 && window_.received() == 0 && !closing_) {
    window_.Expect(worker, true);
    Replan();
  } else if (!window_.expected(worker)) {
    out->first_window = version_ + 1;
  }
}

absl::Status WindowState::Leave(uint32_t worker, absl::Time now, std::optional<ClosingWindow>* closing) {
  if (members_.at(worker).state == v1::WORKER_STATE_NEVER_JOINED) {
    return Refusal(v1::ERROR_REASON_NOT_JOINED, absl::StrCat("worker ", worker, " never joined"),
                   {{"worker", Str(worker)}});
  }
  members_.Leave(worker, now);
  // An elastic member leaving before it contributed is no longer waited for.
  if (members_.elastic() && window_.expected(worker) && !window_.has(worker) && !closing_) {
    window_.Expect(worker, false);
    *closing = TakeIfComplete(false);
  }
  return absl::OkStatus();
}

absl::Status WindowState::CheckCovers(const v1::PushHeader& h) const {
  for (uint32_t c : h.covers()) {
    if (members_.at(c).covered_by != static_cast<int64_t>(h.worker())) {
      return Refusal(v1::ERROR_REASON_NOT_JOINED,
                     absl::StrFormat("worker %d pushes for worker %d without having joined for it", h.worker(), c),
                     {{"worker", Str(h.worker())}});
    }
    if (!window_.expected(c) || window_.has(c)) {
      return Refusal(v1::ERROR_REASON_COVERS,
                     absl::StrFormat("worker %d cannot contribute to window %d (not expected, or already in)", c,
                                     version_));
    }
  }
  return absl::OkStatus();
}

// The checks shared by Admit and Accept, from "already applied" to "this
// window, open, expecting this worker".
absl::Status WindowState::CheckOpenWindow(const v1::PushHeader& h, std::optional<LateNote>* late) {
  const uint32_t id = h.worker();
  WorkerRecord& w = members_.at(id);
  const ContributionLedger::Lookup seen = ledger_.Find(id, h.contribution_key(), h.window());
  if (seen.seen == ContributionLedger::Seen::kDuplicate) {
    ++duplicates_;
    ++w.duplicates;
    if (seen.window == version_ && window_.has(id)) {
      ++window_.slot(id)->duplicates;
    } else {
      *late = LateNote{id, seen.window, h.contribution_key(), "duplicate"};
    }
    return Refusal(v1::ERROR_REASON_DUPLICATE,
                   absl::StrFormat("duplicate: contribution key %d of worker %d was already applied to window %d; "
                                   "acknowledged, not counted",
                                   h.contribution_key(), id, seen.window),
                   {{"window", Str(seen.window)}, {"key", Str(h.contribution_key())}});
  }
  if (seen.seen == ContributionLedger::Seen::kReused) {
    return Refusal(v1::ERROR_REASON_KEY_REUSED,
                   absl::StrFormat("contribution key %d of worker %d was already used for window %d, not %d: give "
                                   "every window's contribution its own key (e.g. the window number)",
                                   h.contribution_key(), id, seen.window, h.window()),
                   {{"window", Str(seen.window)}, {"key", Str(h.contribution_key())}});
  }
  if (done()) {
    return Refusal(v1::ERROR_REASON_JOB_DONE,
                   absl::StrFormat("job '%s' is done (%d steps); no more contributions", spec_->job_id(), version_));
  }
  if (h.window() < version_ || (h.window() == version_ && closing_)) {
    ++stale_;
    ++w.stale;
    *late = LateNote{id, h.window(), h.contribution_key(), "stale"};
    return Refusal(v1::ERROR_REASON_STALE_WINDOW,
                   h.window() < version_
                       ? absl::StrFormat("stale: window %d is closed; the open window is %d (pull version %d and "
                                         "recompute)",
                                         h.window(), version_, version_)
                       : absl::StrFormat("stale: window %d is closing without this contribution", version_),
                   {{"window", Str(h.window())}, {"open_window", Str(closing_ ? version_ + 1 : version_)}});
  }
  if (h.window() > version_) {
    return Refusal(v1::ERROR_REASON_WINDOW_NOT_OPEN,
                   absl::StrFormat("window %d is not open yet; the open window is %d", h.window(), version_),
                   {{"window", Str(h.window())}, {"open_window", Str(version_)}});
  }
  if (planned() && h.plan_id() != 0 && h.plan_id() != plan_.id()) {
    return Refusal(v1::ERROR_REASON_PLAN_CHANGED,
                   absl::StrFormat("window %d's data plan is not the one worker %d computed on (the server restarted "
                                   "or the window's members changed): join again and recompute",
                                   version_, id),
                   {{"window", Str(version_)}, {"plan_id", Str(plan_.id())}});
  }
  // Bit for bit: the scale is the server's, the worker only repeats it.
  if (!(h.loss_scale() == loss_scale_)) {
    return Refusal(v1::ERROR_REASON_BAD_VALUE,
                   loss_scale_ == 0
                       ? absl::StrFormat("push declares loss_scale %g but job '%s' has no loss scaling: send 0",
                                         h.loss_scale(), spec_->job_id())
                       : absl::StrFormat("push declares loss_scale %.9g; window %d of job '%s' is computed with loss "
                                         "scale %.9g (ParametersHeader.loss_scale): multiply the loss by it and push "
                                         "it (a client that predates loss scaling cannot train this job)",
                                         h.loss_scale(), version_, spec_->job_id(), loss_scale_),
                   {{"field", "loss_scale"}, {"loss_scale", absl::StrFormat("%.9g", loss_scale_)}});
  }
  if (window_.has(id)) {
    return Refusal(v1::ERROR_REASON_SECOND_CONTRIBUTION,
                   absl::StrFormat("worker %d already contributed to window %d under another key", id, version_));
  }
  if (!window_.expected(id)) {
    return Refusal(v1::ERROR_REASON_NOT_A_MEMBER_YET,
                   absl::StrFormat("worker %d is not a member of window %d (it joined after the window started); "
                                   "its first window is %d",
                                   id, version_, version_ + 1),
                   {{"first_window", Str(version_ + 1)}});
  }
  return CheckCovers(h);
}

absl::Status WindowState::Admit(const v1::PushHeader& h, absl::Time now, std::optional<LateNote>* late) {
  if (stopping_) return ShuttingDown();
  WorkerRecord& w = members_.at(h.worker());
  if (!w.joined()) {
    return Refusal(v1::ERROR_REASON_NOT_JOINED,
                   absl::StrFormat("worker %d pushed before joining job '%s' (or after leaving it); call Join first",
                                   h.worker(), spec_->job_id()),
                   {{"worker", Str(h.worker())}});
  }
  w.last_seen = now;
  return CheckOpenWindow(h, late);
}

void WindowState::RecordContribution(uint32_t worker, const v1::PushHeader& h, absl::Time now) {
  ledger_.Record(worker, h.contribution_key(), version_);
  WorkerRecord& w = members_.at(worker);
  w.state = v1::WORKER_STATE_PUSHED;
  w.last_seen = now;
  ++w.contributions;
  w.last_window = version_;
  w.contributed_ever = true;
  ++accepted_;
}

absl::StatusOr<Accepted> WindowState::Accept(const v1::PushHeader& h, Slot* slot, bool shared_memory,
                                             absl::Time now, std::optional<LateNote>* late) {
  if (stopping_) return ShuttingDown();
  if (absl::Status s = CheckOpenWindow(h, late); !s.ok()) return s;
  // Hierarchical: every covered worker has contributed through this push
  // (an empty slot; the gradient is in the pusher's).
  for (uint32_t c : h.covers()) {
    Slot covered;
    covered.key = h.contribution_key();
    covered.attempt = slot->attempt;
    covered.arrival = now;
    window_.Add(c, std::move(covered));
    RecordContribution(c, h, now);
  }
  window_.Add(h.worker(), std::move(*slot));
  RecordContribution(h.worker(), h, now);
  members_.at(h.worker()).shared_memory = shared_memory;
  Accepted out;
  out.window = version_;
  out.received = window_.received();
  out.expected = window_.expected_count();
  out.closing = TakeIfComplete(DeadlinePassed(now));
  return out;
}

bool WindowState::DeadlinePassed(absl::Time now) const {
  const v1::WindowRule& rule = spec_->window();
  return rule.policy() == v1::WindowRule::POLICY_QUORUM &&
         now - window_.opened() >= absl::Milliseconds(static_cast<int64_t>(rule.deadline_ms()));
}

std::optional<ClosingWindow> WindowState::TakeIfComplete(bool deadline_passed) {
  if (closing_ || stopping_ || done()) return std::nullopt;
  if (!window_.Complete(spec_->window(), members_.elastic(), deadline_passed)) return std::nullopt;
  closing_ = true;
  ClosingWindow w = window_.Take();
  if (planned()) w.plan = plan_;
  return w;
}

void WindowState::Advance(uint64_t new_version, absl::Time now) {
  // Only the window that was closing advances, by one.
  GRADACC_CHECK_MSG(closing_ && new_version == version_ + 1, "advance to %d from %d (closing: %s)", new_version,
                    version_, closing_ ? "yes" : "no");
  if (planned()) cursor_ = CursorAfter(*spec_, plan_);
  version_ = new_version;
  closing_ = false;
  for (uint32_t i = 0; i < members_.size(); ++i) {
    WorkerRecord& w = members_.at(i);
    if (w.state == v1::WORKER_STATE_PUSHED) w.state = v1::WORKER_STATE_JOINED;
  }
  window_.Open(new_version, ExpectedNext(), now);
  Replan();
}

absl::Status WindowState::CheckHeld(uint32_t worker, uint64_t key) const {
  if (ledger_.Holds(worker, key)) return absl::OkStatus();
  return Refusal(v1::ERROR_REASON_CONTRIBUTION_LOST,
                 absl::StrFormat("this server holds no contribution with key %d of worker %d (the push never "
                                 "completed here, or the server restarted from a checkpoint taken before it): push "
                                 "it again",
                                 key, worker),
                 {{"key", Str(key)}, {"worker", Str(worker)}});
}

void WindowState::CountRejected(uint32_t worker) {
  ++rejected_;
  if (worker < members_.size()) ++members_.at(worker).rejected;
}

}  // namespace gradacc
