// Window: the contributions of the open window, one slot per worker, kept in
// worker order (the reduction adds them in that order, whatever the arrival
// order), the set of workers it expects, and its completeness rule (WAIT:
// every expected contribution; QUORUM: a quorum once the deadline passed;
// elastic: at least min_workers).
//
// A slot owns what was accepted: a private buffer filled from gRPC chunks,
// or a view of a shared-memory segment that the slot keeps alive and that
// no worker can be handed again (ShmTransport gives every attach a fresh
// segment), so an accepted contribution cannot change.
//
// Thread-compatible: LockedWindow guards it with the window mutex.
#ifndef GRADACC_SERVER_WINDOW_H_
#define GRADACC_SERVER_WINDOW_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "common/buffer.h"
#include "common/shm.h"
#include "gradacc/v1/data.pb.h"
#include "gradacc/v1/job.pb.h"
#include "server/accumulator.h"

namespace gradacc {

struct Slot {
  // The gradient, when the slot holds it: a shared-memory push's view of
  // its segment (empty for a worker covered by another's push, and for a
  // gRPC push, whose data the window's Accumulator holds: `streamed`).
  FloatBuffer grad;
  bool streamed = false;
  std::shared_ptr<ShmSegment> segment;  // a shared-memory push: what `grad` views
  uint64_t samples = 0;
  uint32_t micro_batches = 0;
  double loss_sum = 0;
  uint64_t key = 0;
  uint32_t attempt = 0;
  uint32_t duplicates = 0;
  double grad_norm = 0;
  // A gRPC push's sum of squares, measured as its chunks arrived.
  std::optional<double> sum_of_squares;
  absl::Time arrival;
  // PushHeader.untouched_tensors: the job's tensors this contribution has
  // no gradient for (increasing; empty: it touched all).
  std::vector<uint32_t> untouched;
};

// Whether the slot carries a gradient of its own (not a covered worker's).
inline bool Contributes(const Slot& slot) { return slot.streamed || slot.grad.size() != 0; }

// A window handed over to be reduced and stepped.
struct ClosingWindow {
  uint64_t window = 0;
  std::vector<Slot> slots;        // in worker order
  std::vector<uint32_t> workers;  // their ids
  std::vector<uint32_t> missing;  // expected but absent
  absl::Time opened;
  absl::Time last_arrival;
  v1::WindowPlan plan;  // a job with a data plan: what the window was planned to train on
  // What to reduce, from the Accumulator (absent: the slots' own buffers,
  // in order).
  std::optional<WindowSources> sources;
};

class Window {
 public:
  explicit Window(uint32_t num_workers);

  // Starts window `number` expecting `expected[i]` of each worker.
  void Open(uint64_t number, const std::vector<bool>& expected, absl::Time now);
  uint64_t number() const { return number_; }
  absl::Time opened() const { return opened_; }

  bool expected(uint32_t worker) const { return expected_[worker]; }
  void Expect(uint32_t worker, bool expected);
  uint32_t expected_count() const { return expected_count_; }
  uint32_t received() const { return received_; }
  uint64_t samples() const { return samples_; }
  bool has(uint32_t worker) const { return slots_[worker].has_value(); }
  Slot* slot(uint32_t worker) { return slots_[worker].has_value() ? &*slots_[worker] : nullptr; }
  void Add(uint32_t worker, Slot slot);
  // Expected workers without a contribution yet.
  std::vector<uint32_t> Missing() const;

  // Whether the window may close now under `rule`.
  bool Complete(const v1::WindowRule& rule, bool elastic, bool deadline_passed) const;
  // Hands the slots over (the window is then empty until the next Open).
  ClosingWindow Take();

 private:
  uint64_t number_ = 0;
  absl::Time opened_;
  std::vector<std::optional<Slot>> slots_;
  std::vector<bool> expected_;
  uint32_t expected_count_ = 0;
  uint32_t received_ = 0;
  uint64_t samples_ = 0;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_WINDOW_H_
