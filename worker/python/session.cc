#include "worker/python/session.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gradacc::python {

absl::StatusOr<std::shared_ptr<Session>> Session::Connect(ClientOptions options, bool hierarchical) {
  // Views handed to Python may outlive a re-attach inside Step.
  options.retain_released_memory = true;
  std::shared_ptr<Session> s(new Session());
  gradacc::MutexLock lock(&s->busy_);
  if (hierarchical) {
    GRADACC_ASSIGN_OR_RETURN(s->group_, GroupClient::Connect(options));
    s->training_ = s->group_.get();
    s->hierarchical_ = true;
    s->leader_ = s->group_->leader();
  } else {
    GRADACC_ASSIGN_OR_RETURN(s->client_, Client::Connect(options));
    s->adapter_ = std::make_unique<ClientAdapter>(*s->client_);
    s->training_ = s->adapter_.get();
  }
  s->job_ = s->training_->job();
  s->worker_ = s->training_->worker();
  GRADACC_ASSIGN_OR_RETURN(s->layout_, ModelLayout::FromSpec(s->job_.model()));
  return s;
}

Session::~Session() = default;

absl::Status Session::Enter(const char* what) {
  if (!busy_.TryLock()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": another thread is using this gradacc Client (step() in progress?); a Client is for one thread "
              "at a time"));
  }
  if (closed_) {
    busy_.Unlock();
    return absl::FailedPreconditionError(absl::StrCat(what, ": this gradacc Client is closed"));
  }
  return absl::OkStatus();
}

void Session::Exit() { busy_.Unlock(); }

absl::StatusOr<Session::State> Session::state() {
  GRADACC_RETURN_IF_ERROR(Enter("state"));
  State st;
  st.version = training_->version();
  st.done = training_->done();
  st.loss_scale = training_->loss_scale();
  st.epoch = epoch_;
  if (client_ != nullptr) {
    st.pending_samples = client_->pending_samples();
    st.pending_micro_batches = client_->pending_micro_batches();
  }
  st.transport = training_->transport();
  Exit();
  return st;
}

absl::StatusOr<Session::Lease> Session::LeaseGrad() {
  GRADACC_RETURN_IF_ERROR(Enter("grad"));
  Lease lease{training_->grad().data(), epoch_};
  {
    gradacc::MutexLock lock(&lease_mu_);
    ++live_leases_[epoch_];
  }
  Exit();
  return lease;
}

absl::StatusOr<Session::Lease> Session::LeaseParams() {
  GRADACC_RETURN_IF_ERROR(Enter("params"));
  // const_cast: the Python array made from it is read-only.
  Lease lease{const_cast<float*>(training_->params().data()), epoch_};
  {
    gradacc::MutexLock lock(&lease_mu_);
    ++live_leases_[epoch_];
  }
  Exit();
  return lease;
}

void Session::ReleaseLease(uint64_t epoch) {
  gradacc::MutexLock lock(&lease_mu_);
  auto it = live_leases_.find(epoch);
  if (it != live_leases_.end() && --it->second <= 0) live_leases_.erase(it);
}

void Session::MaybeReleaseRetired() {
  if (client_ == nullptr) return;  // a GroupClient's leader keeps what it retired (rare: re-attaches only)
  bool older_alive = false;
  {
    gradacc::MutexLock lock(&lease_mu_);
    older_alive = !live_leases_.empty() && live_leases_.begin()->first < epoch_;
  }
  if (!older_alive) client_->ReleaseRetiredMemory();
}

absl::Status Session::AddMicroBatch(uint64_t samples, double loss_sum) {
  GRADACC_RETURN_IF_ERROR(Enter("add_micro_batch"));
  training_->AddMicroBatch(samples, loss_sum);
  Exit();
  return absl::OkStatus();
}

absl::Status Session::Discard() {
  GRADACC_RETURN_IF_ERROR(Enter("discard"));
  training_->Discard();
  Exit();
  return absl::OkStatus();
}

absl::Status Session::SetUntouched(std::vector<uint32_t> tensors) {
  GRADACC_RETURN_IF_ERROR(Enter("set_untouched"));
  absl::Status s = training_->SetUntouched(std::move(tensors));
  Exit();
  return s;
}

absl::StatusOr<StepResult> Session::Step() {
  GRADACC_RETURN_IF_ERROR(Enter("step"));
  MaybeReleaseRetired();
  const uint64_t before = training_->version();
  absl::StatusOr<StepResult> result = training_->Step();
  // Only a step that moved to a new version ends the views' window (a
  // refused one, e.g. NOTHING_TO_PUSH or NOT_FINITE, leaves grad() as it was).
  if (training_->version() != before) ++epoch_;
  Exit();
  return result;
}

absl::StatusOr<v1::Status> Session::GetStatus() {
  GRADACC_RETURN_IF_ERROR(Enter("status"));
  absl::StatusOr<v1::Status> status = training_->GetStatus();
  Exit();
  return status;
}

absl::Status Session::ReportTestAccuracy(double accuracy, uint64_t step) {
  GRADACC_RETURN_IF_ERROR(Enter("report_test_accuracy"));
  absl::Status status = training_->ReportTestAccuracy(accuracy, step);
  Exit();
  return status;
}

absl::Status Session::Leave() {
  GRADACC_RETURN_IF_ERROR(Enter("leave"));
  absl::Status status = training_->Leave();
  Exit();
  return status;
}

absl::Status Session::Close() {
  GRADACC_RETURN_IF_ERROR(Enter("close"));
  closed_ = true;
  // An idle gRPC channel notices a server's GOAWAY only at its backup poll
  // (every 5 s), and a server shutting down waits that long for it: without
  // a view left, free the client (its channels and memory) now; else it goes
  // with the Session, after the last view. No lease can be taken meanwhile
  // (that needs busy_). A GroupClient stays: freeing its communicator is
  // collective.
  bool views_alive = false;
  {
    gradacc::MutexLock lock(&lease_mu_);
    views_alive = !live_leases_.empty();
  }
  if (client_ != nullptr && !views_alive) {
    training_ = nullptr;
    adapter_.reset();
    client_.reset();
  }
  Exit();
  return absl::OkStatus();
}

void Session::AbandonGroupBeforeMpiFinalize() {
  gradacc::MutexLock lock(&busy_);
  if (group_ == nullptr) return;
  // Its memory stays valid for any view still alive; the process is ending.
  (void)group_.release();
  training_ = nullptr;
  closed_ = true;
}

}  // namespace gradacc::python
