// Failpoints: fault injection for tests, parsed once from --kill_at.
//
//   push:W:N        SIGKILL right after accepting the N-th contribution of
//                   window W (N counts from 1)
//   mid_broadcast:W after window W's step is durable and published, when the
//                   first parked pull has its answer and the others not yet
//   after_publish:W after window W closed and every parked pull was answered
//   before_checkpoint:W  after window W's step, before its checkpoint
//   mid_checkpoint:W     window W's checkpoint is complete in its temporary
//                        folder, not yet renamed into place
//   after_checkpoint:W   window W's step is durable, not yet in the step
//                        ledger nor published
//
// Immutable after construction; thread-safe.
#ifndef GRADACC_SERVER_FAILPOINTS_H_
#define GRADACC_SERVER_FAILPOINTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gradacc {

class Failpoints {
 public:
  enum class Event { kPush, kMidBroadcast, kAfterPublish, kBeforeCheckpoint, kMidCheckpoint, kAfterCheckpoint };

  Failpoints() = default;
  // INVALID_ARGUMENT names the first entry that does not parse.
  static absl::StatusOr<Failpoints> Parse(const std::vector<std::string>& specs);

  // Raises SIGKILL when a failpoint matches (the process dies here).
  void MaybeKill(Event event, uint64_t window, uint64_t count = 0) const;
  bool empty() const { return points_.empty(); }

 private:
  struct Point {
    Event event;
    uint64_t window;
    uint64_t count;  // push only
    std::string text;
  };
  std::vector<Point> points_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_FAILPOINTS_H_
