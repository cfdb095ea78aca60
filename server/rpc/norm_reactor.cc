#include "server/rpc/norm_reactor.h"

#include "common/tsan.h"

namespace gradacc {

NormReactor::NormReactor(ShardExchange* exchange, uint64_t window, v1::GetNormPartialResponse* response)
    : exchange_(exchange), response_(response), state_(std::make_shared<State>()) {
  std::shared_ptr<State> state = state_;
  const uint64_t id = exchange_->WhenPublished(window, [this, state](const v1::GetNormPartialResponse& part) {
    {
      MutexLock lock(&state->mu);
      if (state->finished) return;
      state->finished = true;
    }
    *response_ = part;
    TsanRelease(this);
    Finish(grpc::Status::OK);
  });
  MutexLock lock(&state_->mu);
  id_ = id;
  TsanRelease(this);
}

void NormReactor::OnCancel() {
  TsanAcquire(this);
  uint64_t id;
  {
    MutexLock lock(&state_->mu);
    if (state_->finished) return;
    state_->finished = true;
    id = id_;
  }
  exchange_->Cancel(id);
  TsanRelease(this);
  Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
}

}  // namespace gradacc
