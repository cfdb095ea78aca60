#include "server/shm_transport.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "common/errors.h"
#include "common/log.h"

namespace gradacc {

ShmTransport::ShmTransport(const std::string& dir, bool sharded, uint64_t elements, uint32_t num_workers,
                           absl::Span<const float> params, bool fast_path)
    : first_generation_(static_cast<uint64_t>(absl::ToUnixMicros(absl::Now()))),
      dir_(dir),
      elements_(elements),
      num_workers_(num_workers),
      grads_(num_workers),
      next_generation_(first_generation_) {
  if (dir.empty()) {
    off_reason_ = "off on this server (--shared_memory_dir is empty)";
    return;
  }
  if (sharded) {
    off_reason_ = "sharded servers move data through gRPC only";
    return;
  }
  ShmSegment::RemoveStale(dir);
  nonce_ = ShmSegment::NewNonce();
  auto segment = ShmSegment::Create(ShmSegment::NewPath(dir, nonce_, "params"), elements, nonce_);
  if (!segment.ok()) {
    // Shown to clients in status: no server paths.
    off_reason_ = absl::StrReplaceAll(segment.status().message(), {{dir, "<shared_memory_dir>"}});
    GRADACC_LOG(INFO, "shared memory off: %s", off_reason_);
    return;
  }
  std::copy(params.begin(), params.end(), (*segment)->data());
  params_ = *std::move(segment);
  if (!fast_path) return;
  auto bell = ShmBellSegment::Create(ShmSegment::NewPath(dir, nonce_, "bell"), nonce_);
  if (!bell.ok()) {
    GRADACC_LOG(WARNING, "shared-memory fast path off: %s", bell.status().message());
    return;
  }
  bell_ = *std::move(bell);
}

v1::AttachSharedMemoryResponse ShmTransport::Attach(uint32_t worker, bool params_stable) {
  v1::AttachSharedMemoryResponse response;
  if (!on()) {
    response.set_reason(off_reason_);
    return response;
  }
  uint64_t generation;
  {
    MutexLock lock(&mu_);
    generation = next_generation_++;
  }
  // Reserving the pages may take a while: no lock held.
  auto created = ShmSegment::Create(
      ShmSegment::NewPath(dir_, nonce_, absl::StrCat("w", worker, "g", generation)), elements_, nonce_);
  if (!created.ok()) {
    response.set_reason(std::string(created.status().message()));
    return response;
  }
  std::shared_ptr<ShmSegment> segment = *std::move(created);
  {
    MutexLock lock(&mu_);
    // The previous segment stays alive (and unreachable by path: its file
    // goes with its last holder) while an open window's slot holds it.
    ReplaceLocked(worker, Grad{segment, generation});
  }
  response.set_available(true);
  response.set_params_path(params_->path());
  response.set_grad_path(segment->path());
  response.set_nonce_hi(nonce_[0]);
  response.set_nonce_lo(nonce_[1]);
  response.set_num_elements(elements_);
  response.set_params_stable(params_stable);
  response.set_generation(generation);
  if (bell_ != nullptr) response.set_bell_path(bell_->path());
  return response;
}

void ShmTransport::Detach(uint32_t worker) {
  MutexLock lock(&mu_);
  ReplaceLocked(worker, Grad{});
}

void ShmTransport::ReplaceLocked(uint32_t worker, Grad next) {
  if (grads_[worker].segment != nullptr) retired_pulls_ += MailboxOf(*grads_[worker].segment)->pulls.load();
  grads_[worker] = std::move(next);
}

uint64_t ShmTransport::BellPullBytes() const {
  MutexLock lock(&mu_);
  uint64_t pulls = retired_pulls_;
  for (const Grad& g : grads_) {
    if (g.segment != nullptr) pulls += MailboxOf(*g.segment)->pulls.load(std::memory_order_relaxed);
  }
  return pulls * elements_ * sizeof(float);
}

absl::StatusOr<std::shared_ptr<ShmSegment>> ShmTransport::SegmentFor(uint32_t worker, uint64_t generation) const {
  MutexLock lock(&mu_);
  const Grad& g = grads_[worker];
  if (g.segment == nullptr || g.generation != generation) {
    return Refusal(v1::ERROR_REASON_NOT_ATTACHED,
                   g.segment == nullptr
                       ? absl::StrFormat("worker %d pushed through shared memory but holds no gradient segment of "
                                         "this server; attach again",
                                         worker)
                       : absl::StrFormat("worker %d pushed from segment generation %d, but its current segment is "
                                         "generation %d (it attached again since); attach again",
                                         worker, generation, g.generation),
                   {{"worker", absl::StrCat(worker)}});
  }
  return g.segment;
}

bool ShmTransport::Attached(uint32_t worker) const {
  MutexLock lock(&mu_);
  return worker < grads_.size() && grads_[worker].segment != nullptr;
}

std::shared_ptr<ShmSegment> ShmTransport::Current(uint32_t worker) const {
  MutexLock lock(&mu_);
  return worker < grads_.size() ? grads_[worker].segment : nullptr;
}

void ShmTransport::BeginParamsWrite(uint64_t version) {
  if (!on()) return;
  // A writer's seqlock: the odd value must be visible before any of the
  // stores to the parameters, hence the fence after it (a release store
  // alone orders only what comes before it).
  params_->header()->seq.store(2 * version + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
}

void ShmTransport::Publish(uint64_t version) {
  if (!on()) return;
  params_->header()->seq.store(2 * version, std::memory_order_release);
}

void ShmTransport::PublishHeader(const v1::ParametersHeader& header) {
  if (bell_ == nullptr) return;
  v1::ParametersHeader shm = header;
  shm.set_shared_memory(true);
  const std::string bytes = shm.SerializeAsString();
  ShmBell* const b = bell_->bell();
  // The header's own seqlock (the worker checks it around its copy).
  const uint32_t p = b->published.load(std::memory_order_relaxed);
  b->published.store(p + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  const bool fits = bytes.size() <= sizeof(b->params_header);
  if (fits) std::memcpy(b->params_header, bytes.data(), bytes.size());
  b->params_header_bytes = fits ? static_cast<uint32_t>(bytes.size()) : 0;
  b->published.store(p + 2, std::memory_order_release);
  FutexWake(&b->published, INT_MAX);
}

}  // namespace gradacc
