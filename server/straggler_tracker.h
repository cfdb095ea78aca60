// StragglerTracker: who holds the job up. For every closed window it
// measures each expected worker's arrival against the window's opening and
// against the median arrival, names the slowest worker and by how much, and
// counts for each worker the windows in a row it was late for — missing when
// the window closed, which happens when a QUORUM deadline closes a window
// without it. A worker late `straggler_windows` windows in a row is a
// straggler until it contributes to a window again.
//
// Plain data, no I/O. Thread-compatible: LockedWindow guards it with the
// window mutex.
#ifndef GRADACC_SERVER_STRAGGLER_TRACKER_H_
#define GRADACC_SERVER_STRAGGLER_TRACKER_H_

#include <cstdint>
#include <vector>

#include "absl/time/time.h"
#include "gradacc/v1/control.pb.h"
#include "server/window.h"

namespace gradacc {

class StragglerTracker {
 public:
  // `straggler_windows` 0: nobody is ever called a straggler.
  StragglerTracker(uint32_t num_workers, uint32_t straggler_windows);

  // A window handed over to be stepped (`window.last_arrival` is when it
  // closed): its arrivals, which go to status and the step ledger. Workers
  // that became stragglers with it are appended to `new_stragglers`.
  v1::WindowArrivals Observe(const ClosingWindow& window, std::vector<uint32_t>* new_stragglers);

  uint32_t late_windows(uint32_t worker) const { return late_[worker]; }
  bool straggler(uint32_t worker) const;
  std::vector<uint32_t> stragglers() const;
  // last_window_arrivals, stragglers and straggler_windows of `status`.
  void Fill(v1::Status* status) const;

 private:
  const uint32_t straggler_windows_;
  std::vector<uint32_t> late_;  // windows in a row, per worker
  v1::WindowArrivals last_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_STRAGGLER_TRACKER_H_
