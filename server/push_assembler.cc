#include "server/push_assembler.h"

#include <utility>

#include "common/errors.h"
#include "common/wire.h"

namespace gradacc {

absl::Status PushAssembler::Add(const v1::PushRequest& request) {
  absl::Status status;
  if (request.has_header()) {
    if (session_ != nullptr) {
      status = Refusal(v1::ERROR_REASON_PROTOCOL, "a push stream carries exactly one header");
    } else {
      auto session = trainer_->BeginPush(request.header());
      if (!session.ok()) return session.status();  // BeginPush counted it
      session_ = std::move(*session);
      if (wake_ != nullptr) session_->set_wake(wake_);
      return absl::OkStatus();
    }
  } else if (!request.has_chunk()) {
    status = Refusal(v1::ERROR_REASON_PROTOCOL, "empty push message");
  } else if (session_ == nullptr) {
    status = Refusal(v1::ERROR_REASON_PROTOCOL, "a push stream must start with its header");
  } else {
    const v1::GradientChunk& c = request.chunk();
    status = session_->AddChunk(c.tensor(), c.offset(), c.data(), c.name());
    if (!IsParked(status)) trainer_->CountBytes(c.data().size(), 0);
  }
  return status.ok() || IsParked(status) ? status : Refuse(std::move(status));
}

absl::Status PushAssembler::Add(grpc::ByteBuffer& message) {
  ChunkRef chunk;
  if (session_ != nullptr && ScanMessage(message, &chunk) == MessageKind::kChunk) {
    absl::Status status = session_->AddChunkFrom(chunk.tensor, chunk.offset, chunk.data_size, chunk.name,
                                                 [&](char* dst) { return ReadChunkPayload(message, chunk, dst); });
    if (IsParked(status)) return status;
    trainer_->CountBytes(chunk.data_size, 0);
    return status.ok() ? status : Refuse(std::move(status));
  }
  v1::PushRequest request;
  if (!ParseMessage(message, &request)) {
    return Refuse(Refusal(v1::ERROR_REASON_PROTOCOL, "a push stream message that is not a gradacc.v1.PushRequest"));
  }
  return Add(request);
}

absl::Status PushAssembler::Refuse(absl::Status status) {
  trainer_->RecordRefusal(session_ != nullptr ? session_->header().worker() : ~0u, status);
  session_.reset();
  return status;
}

void PushAssembler::Abandon(const absl::Status& why) {
  // A stream abandoned before its header is counted too (no worker known).
  trainer_->RecordRefusal(session_ != nullptr ? session_->header().worker() : ~0u, why);
  session_.reset();
}

absl::StatusOr<PushResult> PushAssembler::Finish() {
  if (session_ == nullptr) {
    absl::Status s = Refusal(v1::ERROR_REASON_PROTOCOL, "push stream ended without a header");
    trainer_->RecordRefusal(~0u, s);
    return s;
  }
  return trainer_->Commit(std::move(session_));
}

}  // namespace gradacc
