#include "server/rpc/pull_reactor.h"

#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/tsan.h"
#include "common/wire.h"

namespace gradacc {

PullReactor::PullReactor(Trainer* trainer, const v1::PullRequest& request)
    : trainer_(trainer), worker_(request.worker()) {
  if (absl::Status valid = trainer_->validator().CheckCaller(request.job_id(), request.worker()); !valid.ok()) {
    Done(valid);
    return;
  }
  shared_memory_ = request.shared_memory() && trainer_->SharedMemoryAttached(request.worker());
  // The callback may run before WaitForVersion returns (on this thread) or
  // later on the thread that publishes the version.
  const uint64_t id = trainer_->WaitForVersion(
      request.min_version(), [this](auto snapshot) { OnSnapshot(std::move(snapshot)); }, request.worker(),
      request.has_contribution_key() ? std::optional<uint64_t>(request.contribution_key()) : std::nullopt,
      request.exact_version());
  MutexLock lock(&mu_);
  if (id != 0 && !resolved_) wait_id_ = id;
  TsanRelease(this);
}

void PullReactor::Done(const absl::Status& status) {
  {
    MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
  }
  TsanRelease(this);
  Finish(ToGrpcStatus(status));
}

void PullReactor::OnSnapshot(absl::StatusOr<std::shared_ptr<const ParamSnapshot>> snapshot) {
  {
    MutexLock lock(&mu_);
    resolved_ = true;
    wait_id_ = 0;
  }
  if (!snapshot.ok()) {
    Done(snapshot.status());
    return;
  }
  if (shared_memory_) {
    snapshot_ = *std::move(snapshot);
    v1::PullResponse header = snapshot_->header;
    header.mutable_header()->set_shared_memory(true);
    header_ = SerializeMessage(header);
    trainer_->CountBytes(0, header.header().num_elements() * sizeof(float));
    next_chunk_ = snapshot_->chunks.size();
    TsanRelease(this);
    StartWrite(&header_);
    return;
  }
  if (!(*snapshot)->has_chunks) {
    // Published without chunks (every member was on shared memory).
    trainer_->WithChunks([this](std::shared_ptr<const ParamSnapshot> full) { Stream(std::move(full)); });
    return;
  }
  Stream(*std::move(snapshot));
}

void PullReactor::Stream(std::shared_ptr<const ParamSnapshot> snapshot) {
  if (!snapshot->has_chunks) {
    Done(Refusal(v1::ERROR_REASON_SHUTTING_DOWN, "server is shutting down"));
    return;
  }
  snapshot_ = std::move(snapshot);
  header_ = SerializeMessage(snapshot_->header);
  TsanRelease(this);
  StartWrite(&header_);
}

void PullReactor::OnWriteDone(bool ok) {
  TsanAcquire(this);
  if (!ok) {
    Done(absl::CancelledError("pull stream broken"));
    return;
  }
  if (next_chunk_ < snapshot_->chunks.size()) {
    trainer_->CountBytes(0, snapshot_->chunks[next_chunk_].payload_bytes);
    TsanRelease(this);
    StartWrite(&snapshot_->chunks[next_chunk_++].message);
  } else {
    Done(absl::OkStatus());
  }
}

void PullReactor::OnCancel() {
  TsanAcquire(this);
  uint64_t id;
  {
    MutexLock lock(&mu_);
    id = wait_id_;
    wait_id_ = 0;
  }
  // When the pull was still parked, nobody else will finish the call.
  if (id != 0 && trainer_->CancelWait(id, worker_)) Done(absl::CancelledError("pull cancelled"));
}

}  // namespace gradacc
