#include "server/push_assembler.h"

#include <utility>

namespace gradacc {

absl::Status PushAssembler::Add(const v1::PushRequest& request) {
  absl::Status status;
  if (request.has_header()) {
    if (session_ != nullptr) {
      status = absl::InvalidArgumentError("a push stream carries exactly one header");
    } else {
      auto session = trainer_->BeginPush(request.header());
      if (!session.ok()) return session.status();  // BeginPush counted it
      session_ = std::move(*session);
      return absl::OkStatus();
    }
  } else if (!request.has_chunk()) {
    status = absl::InvalidArgumentError("empty push message");
  } else if (session_ == nullptr) {
    return absl::InvalidArgumentError("a push stream must start with its header");
  } else {
    const v1::GradientChunk& c = request.chunk();
    trainer_->CountBytes(c.data().size(), 0);
    status = session_->AddChunk(c.tensor(), c.offset(), c.data(), c.name());
  }
  if (!status.ok() && session_ != nullptr) {
    trainer_->RecordRejected(session_->header().worker(),
                             *session_->reject_reason() ? session_->reject_reason() : "protocol");
    session_.reset();
  }
  return status;
}

absl::StatusOr<PushResult> PushAssembler::Finish() {
  if (session_ == nullptr) {
    return absl::InvalidArgumentError("push stream ended without a header");
  }
  return trainer_->Commit(std::move(session_));
}

}  // namespace gradacc
