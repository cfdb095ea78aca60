// Client: shared memory with a server on the same host. The server offers
// its segments after every join; anything that fails leaves the client on
// gRPC and tells the server why (status shows it).
#include <algorithm>
#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
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
      if (options_.shm_fast_path && !offer.bell_path().empty()) {
        auto bell = ShmBellSegment::Open(offer.bell_path(), nonce);
        if (bell.ok()) bell_ = *std::move(bell);  // else: Push and Pull through gRPC
      }
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
  bell_.reset();
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

absl::Status Client::PushThroughMailbox(const std::string& header, v1::PushResponse* response, absl::Time deadline) {
  ShmMailbox* const mailbox = MailboxOf(*grad_segment_);
  // Our last request is never left REQUESTED: it was taken or cancelled.
  const uint32_t seq = ShmMailbox::SeqOf(mailbox->slot.load(std::memory_order_acquire)) + 1;
  std::memcpy(mailbox->request, header.data(), header.size());
  mailbox->request_bytes = static_cast<uint32_t>(header.size());
  mailbox->slot.store(ShmMailbox::Slot(seq, ShmMailbox::kRequested), std::memory_order_release);
  bell_->Ring();
  const absl::Time until = std::min(deadline, absl::Now() + options_.rpc_timeout);
  for (bool first = true;; first = false) {
    const uint32_t replied = mailbox->reply_seq.load(std::memory_order_acquire);
    if (replied == seq) break;
    const bool gone = !first && !bell_->ServerAlive();
    if (gone || absl::Now() >= until) {
      // Withdrawn unless the server took it (then, as with a call whose
      // deadline passed after the server read it, it may still count).
      uint32_t posted = ShmMailbox::Slot(seq, ShmMailbox::kRequested);
      mailbox->slot.compare_exchange_strong(posted, ShmMailbox::Slot(seq, ShmMailbox::kCancelled),
                                            std::memory_order_acq_rel);
      if (gone) {
        bell_.reset();  // gRPC from now on, until the next attach
        return absl::UnavailableError("the server is gone (its shared-memory bell is free)");
      }
      return absl::DeadlineExceededError("Deadline Exceeded");
    }
    FutexWait(&mailbox->reply_seq, replied, std::min(kShmPollInterval, until - absl::Now()));
  }
  ShmReply reply;
  if (!DecodeShmReply(*mailbox, &reply)) return absl::InternalError("malformed answer in the shared-memory mailbox");
  const absl::Status status =
      FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(reply.code), reply.message, reply.details));
  if (status.ok() && !response->ParseFromString(reply.body)) {
    return absl::InternalError("the server's push answer is not a gradacc.v1.PushResponse");
  }
  return status;
}

bool Client::PullThroughBell(uint64_t min_version, absl::Time deadline, v1::ParametersHeader* header) {
  ShmBell* const bell = bell_->bell();
  const absl::Time until = std::min(deadline, absl::Now() + kShmFastPullWait);
  std::string bytes;
  for (bool first = true;; first = false) {
    const uint32_t published = bell->published.load(std::memory_order_acquire);
    if (published != 0 && published % 2 == 0) {
      const uint32_t n = bell->params_header_bytes;
      if (n == 0 || n > sizeof(bell->params_header)) return false;  // too large: gRPC
      bytes.assign(bell->params_header, n);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (bell->published.load(std::memory_order_relaxed) == published) {
        v1::ParametersHeader h;
        if (!h.ParseFromString(bytes)) return false;
        if (h.version() >= min_version || h.job_done()) {
          if (!ReadSharedParameters(h.version())) return false;
          MailboxOf(*grad_segment_)->pulls.fetch_add(1, std::memory_order_relaxed);
          *header = std::move(h);
          return true;
        }
      }
    }
    if (absl::Now() >= until || (!first && !bell_->ServerAlive())) return false;
    FutexWait(&bell->published, published, std::min(kShmPollInterval, until - absl::Now()));
  }
}

std::string Client::transport() const {
  if (grad_segment_ != nullptr && bell_ != nullptr) {
    return params_stable_ ? "shared memory (fast path, parameters in place)" : "shared memory (fast path)";
  }
  if (grad_segment_ != nullptr) return params_stable_ ? "shared memory (parameters in place)" : "shared memory";
  return shm_note_.empty() ? "gRPC" : absl::StrCat("gRPC (", shm_note_, ")");
}

}  // namespace gradacc
