// LockedWindow: the open window and everything its decisions touch —
// WindowState (membership, the exactly-once ledger, the slots, the
// completeness rule), Progress, StragglerTracker, the workers' parked pulls
// and the status listeners — behind the one window mutex, which nothing
// outside this class names. Each method is one whole operation under it
// (admit a push, accept one, park a pull, close, open the next window, fill
// a status); the Trainer is a pipeline of parts that holds no lock of its
// own and calls them.
//
// Thread-safe. Lock order: the window mutex, then the Accumulator's (Accept
// and Advance run their `agree` / `open` function under it, so that the
// window and the running sum agree on who is in) and the ShmTransport's
// (FillStatus, AllExpected's predicate). Listeners are returned to the
// caller and never called under the lock.
#ifndef GRADACC_SERVER_LOCKED_WINDOW_H_
#define GRADACC_SERVER_LOCKED_WINDOW_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/data.pb.h"
#include "gradacc/v1/job.pb.h"
#include "server/progress.h"
#include "server/shm_transport.h"
#include "server/straggler_tracker.h"
#include "server/window_state.h"

namespace gradacc {

class LockedWindow {
 public:
  using Listener = std::function<void()>;

  // The window a version opens, as its snapshot and deadline need it.
  struct Opened {
    uint64_t version = 0;
    bool done = false;     // the job is done (no window opens)
    double last_loss = 0;  // of the last closed window
    v1::WindowPlan plan;   // a job with a data plan: the window's (id 0: none)
    absl::Time opened;     // when the window opened (a QUORUM deadline counts from it)
  };

  LockedWindow(const v1::JobSpec* spec, uint32_t num_workers, absl::Time started, uint32_t straggler_windows);

  // At start: the loss scale, and a resumed job's state (`restored` may be
  // null) with its checkpoint's name and the number of restarts.
  Opened Start(float loss_scale, const v1::CheckpointState* restored, const std::string& name, uint32_t restarts);

  // --- membership --------------------------------------------------------
  // A join's outcome; `response` gets job_done and the plan. A worker that
  // holds a newer version than this server's is noted (and logged).
  absl::StatusOr<JoinOutcome> Join(const v1::JoinRequest& request, absl::Time now, v1::JoinResponse* response);
  absl::Status Leave(uint32_t worker, absl::Time now, std::optional<ClosingWindow>* closing);
  // A worker could not use the shared memory it was offered (it stays on
  // gRPC; status shows why), or it now can.
  void SharedMemoryFailed(uint32_t worker, const std::string& why);
  void SharedMemoryOffered(uint32_t worker);
  void CountRejected(uint32_t worker);

  // --- pushes ------------------------------------------------------------
  absl::Status Admit(const v1::PushHeader& h, absl::Time now, std::optional<LateNote>* late);
  // Accepts a complete push into `slot`; when it is accepted, `agree` runs
  // under the lock (the Accumulator is told).
  absl::StatusOr<Accepted> Accept(const v1::PushHeader& h, Slot* slot, bool shared_memory, absl::Time now,
                                  std::optional<LateNote>* late, const std::function<void()>& agree);
  // A QUORUM deadline of `window`: the window when it may close now.
  std::optional<ClosingWindow> TakeAtDeadline(uint64_t window);

  // --- pulls -------------------------------------------------------------
  void Seen(uint32_t worker, absl::Time now);
  // A pull of `worker` that will park when `parks`: refused when the push
  // it names (`pushed_key`) is not held; otherwise counted as parked.
  absl::Status ParkPull(uint32_t worker, absl::Time now, bool parks, std::optional<uint64_t> pushed_key);
  // A counted pull was answered (`now`: the worker is alive) or cancelled.
  void PullAnswered(uint32_t worker, absl::Time now);
  void PullCancelled(uint32_t worker);

  // --- steps -------------------------------------------------------------
  // The closing window's step gave up (shutdown): nothing changed.
  void Abandon();
  // The window's step is applied: progress and the stragglers record it
  // (`record` gets the arrivals; `new_stragglers` who just became one).
  // Returns whether the job is done after it.
  bool Stepped(const ClosingWindow& window, float grad_norm, uint64_t samples, absl::Time stepped,
               v1::StepRecord* record, std::vector<uint32_t>* new_stragglers);
  // The next window opens at `version`; `open` runs under the lock (the
  // Accumulator opens it too, so no push of it is admitted before).
  Opened Advance(uint64_t version, float loss_scale, absl::Time now, const std::function<void()>& open);
  void SetLastTiming(const v1::StepTiming& timing);
  void SetFinalWritten();
  void RecordAccuracy(uint64_t step, double accuracy);
  // What a checkpoint of `version` holds of the window and the progress.
  void Export(uint64_t version, v1::CheckpointState* s) const;
  // Whether `pred` holds for every worker the open window expects.
  bool AllExpected(const std::function<bool(uint32_t, const WorkerRecord&)>& pred) const;

  // --- status and lifecycle ----------------------------------------------
  // The job's state, the window's progress, the workers (`shm` says their
  // transport), progress, stragglers and the contribution counts.
  void FillStatus(v1::Status* s, absl::Time now, absl::Duration worker_timeout, const ShmTransport& shm) const;
  uint64_t AddListener(Listener listener);
  void RemoveListener(uint64_t id);
  std::vector<std::shared_ptr<Listener>> Listeners() const;
  // True the first time: the window stops admitting.
  bool Stop();
  uint64_t version() const;
  bool done() const;

 private:
  void FillWorkers(v1::Status* s, absl::Time now, absl::Duration worker_timeout, const ShmTransport& shm) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Opened OpenedLocked(uint64_t version) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const v1::JobSpec* const spec_;
  const uint32_t num_workers_;
  const absl::Time started_;
  mutable Mutex mu_;  // the window mutex
  WindowState state_ ABSL_GUARDED_BY(mu_);
  Progress progress_ ABSL_GUARDED_BY(mu_);
  StragglerTracker stragglers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_listener_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<Listener>> listeners_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_LOCKED_WINDOW_H_
