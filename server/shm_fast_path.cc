#include "server/shm_fast_path.h"

#include <utility>

#include "common/grpc_status.h"
#include "common/shm_fast_path.h"

namespace gradacc {
namespace {

// Writes the answer to request `seq` into the segment's mailbox, unless the
// worker gave up on it and posted a newer one.
void WriteReply(const std::shared_ptr<ShmSegment>& segment, uint32_t seq, Mutex* mu,
                const absl::StatusOr<v1::PushResponse>& answer) {
  ShmReply reply;
  const grpc::Status status = ToGrpcStatus(answer.status());
  reply.code = status.error_code();
  reply.message = status.error_message();
  reply.details = status.error_details();
  if (answer.ok()) reply.body = answer->SerializeAsString();
  MutexLock lock(mu);
  ShmMailbox* const mailbox = MailboxOf(*segment);
  if (ShmMailbox::SeqOf(mailbox->slot.load(std::memory_order_acquire)) != seq) return;
  if (!EncodeShmReply(reply, mailbox)) {
    ShmReply cut;
    cut.code = grpc::StatusCode::INTERNAL;
    cut.message = "the push's answer does not fit the shared-memory mailbox";
    EncodeShmReply(cut, mailbox);
  }
  mailbox->reply_seq.store(seq, std::memory_order_release);
  FutexWake(&mailbox->reply_seq, 1);
}

}  // namespace

ShmFastPath::ShmFastPath(ShmTransport* shm, Handler handler)
    : shm_(shm), handler_(std::move(handler)), thread_([this] { Loop(); }) {}

ShmFastPath::~ShmFastPath() {
  stop_.store(true, std::memory_order_release);
  shm_->bell()->Ring();
  thread_.join();
}

void ShmFastPath::Loop() {
  std::atomic<uint32_t>* const doorbell = &shm_->bell()->bell()->doorbell;
  while (!stop_.load(std::memory_order_acquire)) {
    // Read before looking: a ring during the look makes the wait return.
    const uint32_t seen = doorbell->load(std::memory_order_acquire);
    TakeRequests();
    FutexWait(doorbell, seen, absl::Seconds(1));
  }
}

void ShmFastPath::TakeRequests() {
  for (uint32_t worker = 0; worker < shm_->num_workers(); ++worker) {
    std::shared_ptr<ShmSegment> segment = shm_->Current(worker);
    if (segment == nullptr) continue;
    ShmMailbox* const mailbox = MailboxOf(*segment);
    uint32_t slot = mailbox->slot.load(std::memory_order_acquire);
    if (ShmMailbox::StateOf(slot) != ShmMailbox::kRequested) continue;
    const uint32_t bytes = std::min<uint32_t>(mailbox->request_bytes, sizeof(mailbox->request));
    std::string request(mailbox->request, bytes);
    // Taken only if the worker did not give up (and rewrite it) meanwhile.
    const uint32_t seq = ShmMailbox::SeqOf(slot);
    if (!mailbox->slot.compare_exchange_strong(slot, ShmMailbox::Slot(seq, ShmMailbox::kTaken),
                                               std::memory_order_acq_rel)) {
      continue;
    }
    requests_.fetch_add(1, std::memory_order_relaxed);
    handler_(worker, std::move(request), [segment, seq, mu = reply_mu_](absl::StatusOr<v1::PushResponse> answer) {
      WriteReply(segment, seq, mu.get(), answer);
    });
  }
}

}  // namespace gradacc
