// Trainer: the synchronous window state machine of one job — membership,
// push validation and staging, the exactly-once ledger, the deterministic
// reduction, the optimizer step, published parameter versions and status.
//
// It knows nothing of gRPC: the services in service.cc are thin adapters, and
// tests drive it directly.
//
// Thread-safety: every public method may be called from any thread. One
// mutex (mu_) orders windows and guards membership and counters; the heavy
// work (copying chunks into a push's private buffer, the reduction, the
// optimizer, serialising a version) runs outside it. Callbacks (waiters and
// listeners) are always invoked without any Trainer lock held.
#ifndef GRADACC_SERVER_TRAINER_H_
#define GRADACC_SERVER_TRAINER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/buffer.h"
#include "common/job_spec.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/data.pb.h"
#include "server/optimizer.h"

namespace gradacc {

class Trainer;

// The parameters of one version, serialised once and shared (read-only) by
// every pull that asks for it.
struct ParamSnapshot {
  uint64_t version = 0;
  v1::PullResponse header;               // kind = header
  std::vector<v1::PullResponse> chunks;  // kind = chunk, tensors in order
};

// One push in flight: the header was accepted and chunks are being copied
// into a private buffer. Nothing is visible to the window until
// Trainer::Commit succeeds; dropping the session discards it. Not
// thread-safe (one gRPC stream feeds it).
class PushSession {
 public:
  ~PushSession();
  PushSession(const PushSession&) = delete;
  PushSession& operator=(const PushSession&) = delete;

  // Validates and copies one chunk: tensor index, range, overlap with earlier
  // chunks, byte length, NaN/Inf.
  // `name`, when non-empty, must be the tensor's name.
  absl::Status AddChunk(uint32_t tensor, uint64_t offset, absl::string_view bytes, absl::string_view name = "");
  const v1::PushHeader& header() const { return header_; }
  uint64_t covered_elements() const { return covered_elements_; }

 private:
  friend class Trainer;
  PushSession(Trainer* trainer, const v1::PushHeader& header, FloatBuffer buffer);

  Trainer* const trainer_;
  const v1::PushHeader header_;
  FloatBuffer buffer_;
  // Per tensor: begin -> end of the element ranges received (merged).
  std::vector<std::map<uint64_t, uint64_t>> covered_;
  uint64_t covered_elements_ = 0;
};

struct TrainerOptions {
  // Pushes that may be in flight at once (each holds a model-sized buffer);
  // 0 = 2 * num_workers + 2.
  int max_inflight_pushes = 0;
  // When set, the final parameters are written here (safetensors) when the
  // job completes.
  std::string final_params_path;
  // Elements per chunk of a pulled version.
  uint64_t pull_chunk_elements = 256 * 1024;
  // Parked pulls older than this finish with DEADLINE_EXCEEDED.
  absl::Duration max_pull_wait = absl::Minutes(30);
};

struct PushResult {
  uint64_t window = 0;
  bool closed_window = false;
  uint32_t received = 0;
  uint32_t expected = 0;
};

class Trainer {
 public:
  using SnapshotCallback = std::function<void(absl::StatusOr<std::shared_ptr<const ParamSnapshot>>)>;
  using Listener = std::function<void()>;

  // `spec` is normalised here. `initial` overrides the spec's initialisers
  // when non-empty (tests, resuming).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(v1::JobSpec spec, TrainerOptions options,
                                                         std::optional<FloatBuffer> initial = std::nullopt);
  ~Trainer();

  const v1::JobSpec& spec() const { return spec_; }
  const ModelLayout& layout() const { return layout_; }

  absl::StatusOr<v1::JoinResponse> Join(const v1::JoinRequest& request);
  absl::Status Leave(const v1::LeaveRequest& request);

  // Checks a push header before any data is read: job, worker, membership,
  // duplicate key (ALREADY_EXISTS), stale or future window, sizes. On success
  // reserves a buffer for the push.
  absl::StatusOr<std::unique_ptr<PushSession>> BeginPush(const v1::PushHeader& header);
  // Adds a complete, valid push to its window (re-checking the window and the
  // key under the lock). When it completes the window, the step is applied
  // before this returns.
  absl::StatusOr<PushResult> Commit(std::unique_ptr<PushSession> session);
  // Counts a push that failed after BeginPush (for status).
  void RecordRejected(uint32_t worker);

  // Calls `done` with the snapshot of version >= min_version: at once when it
  // exists (or the job is done), else when it is published. Returns an id for
  // CancelWait; 0 when `done` was already called.
  uint64_t WaitForVersion(uint64_t min_version, SnapshotCallback done);
  // Drops a parked waiter; its callback is not called afterwards. Returns
  // false when the callback already ran or is running.
  bool CancelWait(uint64_t id);
  std::shared_ptr<const ParamSnapshot> Current() const;

  v1::Status GetStatus() const;
  absl::Status ReportMetric(const v1::ReportMetricRequest& request);
  uint64_t AddListener(Listener listener);
  void RemoveListener(uint64_t id);

  // Stops accepting work and finishes every parked waiter with UNAVAILABLE.
  void Shutdown();

  uint64_t version() const;
  bool done() const;
  // A copy of the current parameters (flat).
  std::vector<float> Parameters() const;

 private:
  friend class PushSession;

  struct WorkerInfo {
    v1::WorkerState state = v1::WORKER_STATE_NEVER_JOINED;
    std::string hostname;
    absl::Time last_seen = absl::InfinitePast();
    uint64_t contributions = 0;
    uint64_t duplicates = 0;
    uint64_t rejected = 0;
    uint64_t last_window = 0;
    bool contributed_ever = false;
    // contribution key -> window it went into; the newest kKeepKeys only.
    std::map<uint64_t, uint64_t> applied_keys;
  };
  struct Slot {
    FloatBuffer grad;
    uint64_t samples = 0;
    uint32_t micro_batches = 0;
    double loss_sum = 0;
  };
  struct Waiter {
    uint64_t min_version;
    absl::Time deadline;
    SnapshotCallback done;
  };

  Trainer(v1::JobSpec spec, ModelLayout layout, TrainerOptions options, FloatBuffer params,
          std::unique_ptr<Optimizer> optimizer);

  absl::Status CheckJob(absl::string_view job_id) const;
  absl::Status CheckWorker(uint32_t worker) const;
  absl::Status CheckManifest(const v1::PushHeader& h) const;
  FloatBuffer TakeBuffer() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReturnBuffer(FloatBuffer buffer);
  void ReleaseInflight();
  // Reduces the closed window's slots, steps, publishes the next version.
  void CloseWindow(std::vector<Slot> slots, absl::Time last_arrival) ABSL_LOCKS_EXCLUDED(mu_);
  std::shared_ptr<const ParamSnapshot> BuildSnapshot(uint64_t version, bool job_done, double lr,
                                                     double loss) const;
  void NotifyListeners() ABSL_LOCKS_EXCLUDED(mu_);
  void ExpireWaitersLoop();
  void WriteFinalParameters();

  const v1::JobSpec spec_;
  const ModelLayout layout_;
  const TrainerOptions options_;
  const absl::Time started_;
  const uint32_t num_workers_;

  // Only the thread closing a window touches these (closing_ serialises it).
  FloatBuffer params_;
  std::unique_ptr<Optimizer> optimizer_;

  mutable absl::Mutex mu_;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<const ParamSnapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  std::vector<WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::optional<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  uint32_t received_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t samples_received_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time window_opened_ ABSL_GUARDED_BY(mu_);
  std::vector<FloatBuffer> free_buffers_ ABSL_GUARDED_BY(mu_);
  int inflight_pushes_ ABSL_GUARDED_BY(mu_) = 0;
  int max_inflight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_waiter_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  uint64_t next_listener_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<Listener>> listeners_ ABSL_GUARDED_BY(mu_);

  // Status.
  double last_loss_ ABSL_GUARDED_BY(mu_) = 0;
  double last_grad_norm_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<v1::LossPoint> loss_history_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<absl::Time, uint64_t>> recent_steps_ ABSL_GUARDED_BY(mu_);  // (time, samples)
  v1::StepTiming last_timing_ ABSL_GUARDED_BY(mu_);
  double test_accuracy_ ABSL_GUARDED_BY(mu_) = -1;
  uint64_t test_accuracy_step_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t accepted_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t duplicates_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t stale_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rejected_ ABSL_GUARDED_BY(mu_) = 0;
  bool final_written_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex expiry_mu_;
  bool expiry_stop_ ABSL_GUARDED_BY(expiry_mu_) = false;
  std::thread expiry_thread_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_TRAINER_H_
