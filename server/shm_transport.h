// ShmTransport: the shared-memory data plane for workers on the server's
// host (common/shm.h). It owns the parameter segment (the parameters live
// there; the optimizer writes them in place) with its seqlock, and each
// worker's gradient segment.
//
// Every attach gets a fresh gradient segment (a new file and generation;
// generations start at the server's start time in microseconds, so those of
// a server this one replaced are smaller than any of this one's):
// a segment that holds an accepted contribution is never handed to anyone
// again — its window's slot keeps it alive until the window is reduced — so
// a restarted worker cannot change what was accepted. A shared-memory push
// names the generation it was written in; any other is refused.
//
// With the fast path on (common/shm_fast_path.h) it also owns the bell:
// offered with every attach, written by PublishHeader.
//
// Thread-safe; segments are created outside its lock.
#ifndef GRADACC_SERVER_SHM_TRANSPORT_H_
#define GRADACC_SERVER_SHM_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "common/shm.h"
#include "common/shm_fast_path.h"
#include "gradacc/v1/data.pb.h"

namespace gradacc {

class ShmTransport {
 public:
  // `dir` empty, or a sharded server: off (with the reason). `elements`:
  // what this server owns; `params` are copied into the parameter segment.
  ShmTransport(const std::string& dir, bool sharded, uint64_t elements, uint32_t num_workers,
               absl::Span<const float> params, bool fast_path);

  bool on() const { return params_ != nullptr; }
  const std::string& off_reason() const { return off_reason_; }
  // Where the parameters live when on.
  float* params_data() const { return params_->data(); }

  // A fresh gradient segment for `worker` (or why not: available = false).
  // `params_stable` goes into the offer.
  v1::AttachSharedMemoryResponse Attach(uint32_t worker, bool params_stable);
  // The worker could not use what it was offered: it stays on gRPC.
  void Detach(uint32_t worker);
  // The segment of a shared-memory push: NOT_ATTACHED unless `generation`
  // is the worker's current one.
  absl::StatusOr<std::shared_ptr<ShmSegment>> SegmentFor(uint32_t worker, uint64_t generation) const;
  bool Attached(uint32_t worker) const;
  // The worker's current gradient segment (null when none).
  std::shared_ptr<ShmSegment> Current(uint32_t worker) const;
  uint32_t num_workers() const { return num_workers_; }
  // Parameter bytes workers took through the bell (their mailboxes'
  // `pulls`, with those of segments replaced since): what their Pulls would
  // have sent.
  uint64_t BellPullBytes() const;
  // The fast path's bell (null when the fast path is off).
  ShmBellSegment* bell() const { return bell_.get(); }
  // Whether `generation` was handed out by an earlier server (before a
  // restart): its push is refused NOT_ATTACHED as part of the worker's
  // normal recovery, not a mistake.
  bool FromEarlierServer(uint64_t generation) const {
    return generation != 0 && generation < first_generation_;
  }

  // The seqlock over the parameter segment: odd while the parameters of
  // `version` are overwritten, 2 * version while `version` is in place.
  void BeginParamsWrite(uint64_t version);
  void Publish(uint64_t version);
  // The fast path: the header a Pull of the version published last would
  // carry; wakes the workers waiting for it. Call once the version may be
  // answered (its step is in the ledger).
  void PublishHeader(const v1::ParametersHeader& header);

 private:
  ShmNonce nonce_{};
  const uint64_t first_generation_;
  std::string dir_;
  std::string off_reason_;
  uint64_t elements_ = 0;
  std::unique_ptr<ShmSegment> params_;
  std::unique_ptr<ShmBellSegment> bell_;
  const uint32_t num_workers_;
  mutable Mutex mu_;
  struct Grad {
    std::shared_ptr<ShmSegment> segment;
    uint64_t generation = 0;
  };
  std::vector<Grad> grads_ ABSL_GUARDED_BY(mu_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mu_);
  uint64_t retired_pulls_ ABSL_GUARDED_BY(mu_) = 0;
  // grads_[worker] = next, keeping the pulls counted in the one it replaces.
  void ReplaceLocked(uint32_t worker, Grad next) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_SHM_TRANSPORT_H_
