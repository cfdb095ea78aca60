#include "server/rpc/watch_reactor.h"

#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/tsan.h"

namespace gradacc {

WatchReactor::WatchReactor(Trainer* trainer) : trainer_(trainer), state_(std::make_shared<Shared>()) {
  {
    MutexLock lock(&state_->mu);
    state_->reactor = this;
  }
  std::weak_ptr<Shared> weak = state_;
  listener_id_ = trainer_->AddListener([weak] {
    if (auto s = weak.lock()) s->Notify();
  });
  state_->Notify();
}

void WatchReactor::Shared::Notify() {
  MutexLock lock(&mu);
  if (reactor == nullptr || stopped) return;
  if (writing) {
    dirty = true;
    return;
  }
  writing = true;
  reactor->WriteLatest();
}

void WatchReactor::Shared::WriteDone() {
  MutexLock lock(&mu);
  writing = false;
  if (reactor == nullptr || stopped || !dirty) return;
  dirty = false;
  writing = true;
  reactor->WriteLatest();
}

bool WatchReactor::Shared::Stop() {
  MutexLock lock(&mu);
  const bool first = !stopped;
  stopped = true;
  return first;
}

void WatchReactor::Shared::Detach() {
  MutexLock lock(&mu);
  reactor = nullptr;
}

void WatchReactor::WriteLatest() {
  state_->mu.AssertHeld();
  status_ = trainer_->GetStatus();
  if (status_.state() == v1::JOB_STATE_STOPPING) {
    state_->stopped = true;
    TsanRelease(this);
    Finish(ToGrpcStatus(Refusal(v1::ERROR_REASON_SHUTTING_DOWN, "server is shutting down")));
    return;
  }
  TsanRelease(this);
  StartWrite(&status_);
}

void WatchReactor::OnWriteDone(bool ok) {
  TsanAcquire(this);
  if (!ok) {
    if (state_->Stop()) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watch stream broken"));
    return;
  }
  state_->WriteDone();
}

void WatchReactor::OnCancel() {
  TsanAcquire(this);
  if (state_->Stop()) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
}

void WatchReactor::OnDone() {
  TsanAcquire(this);
  trainer_->RemoveListener(listener_id_);
  state_->Detach();
  TsanRelease(&kTsanServerRpcsDone);
  delete this;
}

}  // namespace gradacc
