// Client: shared memory with a server on the same host. The server offers
// its segments after every join; anything that fails leaves the client on
// gRPC and tells the server why (status shows it).
#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "worker/client/client.h"
#include "worker/client/stubs.h"

namespace gradacc {

void Client::SetUpSharedMemory() {
  if (!options_.shared_memory) {
    shm_note_ = "shared memory off in this worker";
    return;
  }
  if (shards_.size() != 1) {
    shm_note_ = "sharded job";
    return;
  }
  v1::AttachSharedMemoryRequest request;
  request.set_job_id(job_.job_id());
  request.set_worker(options_.worker);
  v1::AttachSharedMemoryResponse offer;
  auto attach = [&] {
    grpc::ClientContext ctx;
    PrepareShardCall(ctx, shards_[0], absl::Now() + options_.rpc_timeout, /*wait_for_ready=*/false);
    return shards_[0].stubs->data->AttachSharedMemory(&ctx, request, &offer);
  };
  if (grpc::Status s = attach(); !s.ok()) {
    DetachSharedMemory();
    shm_note_ = absl::StrCat("attach failed: ", s.error_message());
    return;
  }
  if (!offer.available()) {
    DetachSharedMemory();
    shm_note_ = offer.reason();
    return;
  }
  const ShmNonce nonce = {offer.nonce_hi(), offer.nonce_lo()};
  if (grad_segment_ != nullptr && grad_segment_->path() == offer.grad_path() &&
      grad_segment_->header()->nonce == nonce) {
    return;  // the same server instance: already attached
  }
  DetachSharedMemory();
  const uint64_t n = layout_.num_elements();
  absl::Status failed;
  auto params = offer.num_elements() == n ? ShmSegment::Open(offer.params_path(), /*writable=*/false, n, nonce)
                                          : absl::FailedPreconditionError("segment size differs from the model");
  if (params.ok()) {
    auto grad = ShmSegment::Open(offer.grad_path(), /*writable=*/true, n, nonce);
    if (grad.ok()) {
      // The gradient gathered so far moves into the segment.
      std::copy(grad_.data(), grad_.data() + n, (*grad)->data());
      Retire(std::move(grad_));
      grad_ = FloatBuffer::View((*grad)->data(), n);
      grad_segment_ = *std::move(grad);
      grad_generation_ = offer.generation();
      params_segment_ = *std::move(params);
      params_stable_ = offer.params_stable();
      shm_note_.clear();
      return;
    }
    failed = grad.status();
  } else {
    failed = params.status();
  }
  shm_note_ = std::string(failed.message());
  request.set_failure(shm_note_);
  (void)attach();  // best effort: status shows it
}

void Client::DetachSharedMemory() {
  const uint64_t n = layout_.num_elements();
  if (!grad_.owned()) {
    FloatBuffer own(n);
    std::copy(grad_.data(), grad_.data() + n, own.data());
    grad_ = std::move(own);
  }
  if (!params_.owned()) {
    FloatBuffer own(n);
    std::copy(params_.data(), params_.data() + n, own.data());
    params_ = std::move(own);
  }
  Retire(std::move(grad_segment_));
  Retire(std::move(params_segment_));
  pulled_in_place_ = false;
}

void Client::Retire(FloatBuffer buffer) {
  if (options_.retain_released_memory && buffer.owned() && buffer.data() != nullptr) {
    retired_buffers_.push_back(std::move(buffer));
  }
}

void Client::Retire(std::unique_ptr<ShmSegment> segment) {
  if (options_.retain_released_memory && segment != nullptr) retired_segments_.push_back(std::move(segment));
}

void Client::ReleaseRetiredMemory() {
  retired_buffers_.clear();
  retired_segments_.clear();
}

bool Client::ReadSharedParameters(uint64_t version) {
  const std::atomic<uint64_t>& seq = params_segment_->header()->seq;
  if (seq.load(std::memory_order_acquire) != 2 * version) return false;
  if (params_stable_) {
    // Stays in place until this worker has pushed the window: use it there.
    pulled_in_place_ = true;
    return true;
  }
  std::copy(params_segment_->data(), params_segment_->data() + layout_.num_elements(), staging_.data());
  std::atomic_thread_fence(std::memory_order_acquire);
  pulled_in_place_ = false;
  return seq.load(std::memory_order_relaxed) == 2 * version;
}

std::string Client::transport() const {
  if (grad_segment_ != nullptr) return params_stable_ ? "shared memory (parameters in place)" : "shared memory";
  return shm_note_.empty() ? "gRPC" : absl::StrCat("gRPC (", shm_note_, ")");
}

}  // namespace gradacc
