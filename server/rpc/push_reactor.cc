#include "server/rpc/push_reactor.h"

#include <grpcpp/server_context.h>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/tsan.h"
#include "common/wire.h"

namespace gradacc {

namespace {

constexpr absl::string_view kTimedOut = "push stream still open past the server's push timeout (--push_timeout_s)";

}  // namespace

PushReactor::PushReactor(Trainer* trainer, grpc::CallbackServerContext* context, grpc::ByteBuffer* response)
    : trainer_(trainer),
      context_(context),
      response_(response),
      resume_(std::make_shared<ResumeState>()),
      assembler_(trainer, [state = resume_] { WithReactor(state, &PushReactor::Resume); }) {
  {
    MutexLock lock(&resume_->mu);
    resume_->reactor = this;
  }
  handle_ = trainer_->RegisterPushStream([state = resume_] { WithReactor(state, &PushReactor::TimedOut); });
  {
    MutexLock lock(&mu_);
    reading_ = true;
  }
  TsanRelease(this);
  StartRead(&request_);
}

void PushReactor::WithReactor(const std::shared_ptr<ResumeState>& state, void (PushReactor::*f)()) {
  PushReactor* reactor;
  {
    MutexLock lock(&state->mu);
    reactor = state->reactor;
    if (reactor != nullptr) reactor->refs_.fetch_add(1);
  }
  if (reactor == nullptr) return;
  (reactor->*f)();
  reactor->Unref();
}

void PushReactor::TimedOut() {
  bool committed = false;
  {
    MutexLock lock(&mu_);
    if (finished_) return;
    committed = committed_;
    if (!committed) {
      timed_out_ = true;
      if (busy_) return;  // the placing thread finishes the call
      busy_ = true;       // nobody else places from now on
      parked_ = false;
    }
  }
  if (committed) {
    // Accepted, waiting for its version: OnCancel (which takes mu_, so not
    // under it) withdraws the wait. The context lives until OnDone, which
    // clears resume_->reactor under resume_->mu.
    MutexLock lock(&resume_->mu);
    if (resume_->reactor != nullptr) context_->TryCancel();
    return;
  }
  TsanAcquire(this);
  Cancelled(kTimedOut);
}

void PushReactor::Reply(const absl::Status& status) {
  {
    MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
  }
  if (status.ok()) *response_ = SerializeMessage(reply_);
  TsanRelease(this);
  Finish(ToGrpcStatus(status));
}

void PushReactor::OnReadDone(bool ok) {
  TsanAcquire(this);
  {
    MutexLock lock(&mu_);
    reading_ = false;
    if (ok) {
      arrived_ = true;
    } else {
      eof_ = true;
    }
    // The placing thread (or a parked stream's wake) takes it from here.
    if (busy_ || parked_ || finished_) return;
    busy_ = true;
  }
  Drain();
}

void PushReactor::Drain() {
  while (true) {
    bool read_ahead = false, holding = false, end = false;
    {
      MutexLock lock(&mu_);
      if (finished_) {
        busy_ = false;
        return;
      }
      if (timed_out_) break;  // busy_ stays: nobody places after this
      if (!holding_ && arrived_) {
        current_.Swap(&request_);
        request_.Clear();
        arrived_ = false;
        holding_ = true;
      }
      if (!reading_ && !arrived_ && !eof_) read_ahead = reading_ = true;
      holding = holding_;
      if (!holding) {
        end = eof_ && !reading_;
        if (!end) busy_ = false;  // the next OnReadDone goes on
      }
    }
    if (read_ahead) {
      TsanRelease(this);
      StartRead(&request_);
    }
    if (!holding) {
      if (end) End();
      return;
    }
    absl::Status status = assembler_.Add(current_);
    if (IsParked(status)) {
      // No read past the one ahead until the wake: the client's writes wait
      // in flow control.
      MutexLock lock(&mu_);
      if (woken_) {
        woken_ = false;  // the wake came first: offer again
        continue;
      }
      parked_ = true;
      busy_ = false;
      TsanRelease(this);
      return;
    }
    {
      MutexLock lock(&mu_);
      holding_ = false;
    }
    if (!status.ok()) {
      Reply(status);
      return;
    }
  }
  Cancelled(kTimedOut);
}

void PushReactor::End() {
  if (context_->IsCancelled()) {
    Cancelled("push cancelled (by the client, or by the server shutting down)");
    return;
  }
  bool timed_out;
  {
    MutexLock lock(&mu_);
    timed_out = timed_out_;
    committed_ = !timed_out;
  }
  if (timed_out) {
    Cancelled(kTimedOut);
    return;
  }
  Complete();
}

void PushReactor::Cancelled(absl::string_view what) {
  const absl::Status why = Refusal(v1::ERROR_REASON_PUSH_TIMEOUT, absl::StrCat(what, "; nothing was counted"));
  assembler_.Abandon(why);
  Reply(why);
}

void PushReactor::Resume() {
  {
    MutexLock lock(&mu_);
    if (finished_) return;
    if (!parked_) {
      woken_ = true;
      return;
    }
    parked_ = false;
    busy_ = true;
  }
  TsanAcquire(this);
  Drain();
}

void PushReactor::Unref() {
  if (refs_.fetch_sub(1) == 1) delete this;
}

void PushReactor::Complete() {
  auto result = assembler_.Finish();
  if (!result.ok()) {
    Reply(result.status());
    return;
  }
  // The callback may run before AnswerPush returns (on this thread) or
  // later on the thread that publishes the version.
  const uint64_t id = trainer_->AnswerPush(*result, [this](absl::StatusOr<v1::PushResponse> answer) {
    {
      MutexLock lock(&mu_);
      wait_id_ = 0;
    }
    if (answer.ok()) reply_ = *std::move(answer);
    Reply(answer.status());
  });
  MutexLock lock(&mu_);
  if (id != 0 && !finished_) wait_id_ = id;
}

void PushReactor::OnCancel() {
  TsanAcquire(this);
  uint64_t id;
  bool was_parked;
  {
    MutexLock lock(&mu_);
    id = wait_id_;
    wait_id_ = 0;
    was_parked = parked_;
    parked_ = false;
    if (was_parked) busy_ = true;  // nobody else places from now on
  }
  if (was_parked) {
    // Nobody is placing messages, and a read ahead (if any) finds the call
    // finished: finish here.
    Cancelled("push cancelled while it waited for its turn (by the client, or by the server shutting down)");
    return;
  }
  // Still waiting for the version: nobody else will finish the call.
  if (id != 0 && trainer_->CancelWait(id)) Reply(absl::CancelledError("push cancelled while its step was applied"));
}

void PushReactor::OnDone() {
  TsanAcquire(this);
  trainer_->UnregisterPushStream(handle_);
  {
    MutexLock lock(&resume_->mu);
    resume_->reactor = nullptr;
  }
  TsanRelease(&kTsanServerRpcsDone);
  Unref();
}

}  // namespace gradacc
