// Membership: who takes part in a job and how each worker is doing — its
// state (joined, pushed, left), elastic membership, hierarchical covers
// (which worker pushes for which), how its data moves, and its counters for
// status. The rules that also need the open window (who is expected, when a
// newcomer's first window is) live in WindowState, which owns this.
//
// Thread-compatible: LockedWindow guards it with the window mutex.
#ifndef GRADACC_SERVER_MEMBERSHIP_H_
#define GRADACC_SERVER_MEMBERSHIP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "gradacc/v1/control.pb.h"

namespace gradacc {

struct WorkerRecord {
  v1::WorkerState state = v1::WORKER_STATE_NEVER_JOINED;
  bool member = false;  // expected in the next windows
  int parked_pulls = 0;
  std::string hostname;
  absl::Time last_seen = absl::InfinitePast();
  uint64_t contributions = 0;
  uint64_t duplicates = 0;
  uint64_t rejected = 0;
  uint64_t stale = 0;  // pushes that came after their window closed
  uint64_t last_window = 0;
  bool contributed_ever = false;
  // Transport: whether its last push came through shared memory, and why
  // the shared memory it was offered failed on its side, if it did.
  bool shared_memory = false;
  std::string shm_failure;
  // Hierarchical reduction: the worker that joins and pushes for this one
  // (-1: itself).
  int64_t covered_by = -1;

  bool joined() const { return state == v1::WORKER_STATE_JOINED || state == v1::WORKER_STATE_PUSHED; }
};

class Membership {
 public:
  // `size`: worker ids 0..size-1 (max_workers when elastic). A fixed job
  // has every worker as a member from the start.
  Membership(uint32_t size, bool elastic);

  uint32_t size() const { return static_cast<uint32_t>(workers_.size()); }
  bool elastic() const { return elastic_; }
  WorkerRecord& at(uint32_t worker) { return workers_[worker]; }
  const WorkerRecord& at(uint32_t worker) const { return workers_[worker]; }

  // A join of `worker` speaking for itself and for `covers`; `pushed(i)`
  // says whether worker i has a contribution in the open window.
  template <typename Pushed>
  void Join(uint32_t worker, const std::vector<uint32_t>& covers, const std::string& hostname, absl::Time now,
            Pushed pushed) {
    workers_[worker].covered_by = -1;
    for (uint32_t c : covers) {
      Touch(c, pushed(c) ? v1::WORKER_STATE_PUSHED : v1::WORKER_STATE_JOINED, hostname, now);
      workers_[c].covered_by = worker;
    }
    Touch(worker, pushed(worker) ? v1::WORKER_STATE_PUSHED : v1::WORKER_STATE_JOINED, hostname, now);
  }
  // Marks `worker` and the workers it covers as left (no longer members
  // when elastic).
  void Leave(uint32_t worker, absl::Time now);
  // Whether `worker` was reported LOST: joined, no parked pull, silent for
  // longer than `timeout` (a covered worker is as alive as its pusher).
  bool Lost(uint32_t worker, absl::Time now, absl::Duration timeout) const;
  // Members not left: the job's current size.
  uint32_t ActiveMembers() const;
  bool AnyJoined() const;
  void Seen(uint32_t worker, absl::Time now) { workers_[worker].last_seen = now; }

 private:
  void Touch(uint32_t worker, v1::WorkerState state, const std::string& hostname, absl::Time now);

  const bool elastic_;
  std::vector<WorkerRecord> workers_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_MEMBERSHIP_H_
