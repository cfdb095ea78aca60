// Counters: what /metrics reports beyond Status — gradient and parameter
// bytes moved, refusals by reason, and the histogram of step durations.
// Bytes and refusals go into checkpoints (a resumed server continues them);
// the histogram is this process's. Thread-safe.
#ifndef GRADACC_SERVER_COUNTERS_H_
#define GRADACC_SERVER_COUNTERS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"
#include "gradacc/v1/checkpoint.pb.h"
#include "gradacc/v1/error.pb.h"

namespace gradacc {

// A snapshot of Counters.
struct TrainerCounters {
  uint64_t bytes_received = 0;  // gradient bytes in pushes
  uint64_t bytes_sent = 0;      // parameter bytes in pulls
  std::map<std::string, uint64_t> rejected_by_reason;  // by ReasonLabel
  std::vector<double> step_seconds_bounds;   // histogram bucket upper bounds
  std::vector<uint64_t> step_seconds_counts;  // cumulative, one per bound
  uint64_t step_seconds_count = 0;
  double step_seconds_sum = 0;
  // The running sum (server/accumulator.h; filled by the Trainer).
  uint64_t staging_bytes = 0;
  uint64_t staging_peak_bytes = 0;
  uint64_t pushes_parked = 0;
  uint64_t pushes_spilled = 0;
  // Pushes taken from shared-memory mailboxes (the fast path).
  uint64_t fast_path_pushes = 0;
};

class Counters {
 public:
  Counters();
  void AddBytes(uint64_t received, uint64_t sent);
  void Refused(v1::ErrorReason reason);
  void StepTook(double seconds);
  TrainerCounters Snapshot() const;
  // Into / from a checkpoint's counters (bytes and refusals by reason).
  void Export(v1::CheckpointCounters* out) const;
  void Restore(const v1::CheckpointCounters& in);

 private:
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> bytes_sent_{0};
  mutable Mutex mu_;
  std::map<std::string, uint64_t> rejected_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> buckets_ ABSL_GUARDED_BY(mu_);
  uint64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  double seconds_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_COUNTERS_H_
