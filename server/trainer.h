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

#include <atomic>
#include <cstdint>
#include <cstdio>
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
#include "absl/time/time.h"
#include "common/buffer.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "common/shm.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/data.pb.h"
#include "server/checkpoint.h"
#include "server/optimizer.h"

namespace gradacc {

class Trainer;

// The parameters of one version, serialised once and shared (read-only) by
// every pull that asks for it.
// When every worker of the window moves data through shared memory the
// chunks are not built (has_chunks = false); a gRPC pull then asks
// Trainer::FullSnapshot for them.
struct ParamSnapshot {
  uint64_t version = 0;
  v1::PullResponse header;               // kind = header
  std::vector<v1::PullResponse> chunks;  // kind = chunk, tensors in order
  bool has_chunks = true;
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
  // Why the last AddChunk failed (a metrics label), or "".
  const char* reject_reason() const { return reject_reason_; }

 private:
  friend class Trainer;
  PushSession(Trainer* trainer, const v1::PushHeader& header, FloatBuffer buffer,
              std::shared_ptr<ShmSegment> segment = nullptr);

  Trainer* const trainer_;
  const v1::PushHeader header_;
  FloatBuffer buffer_;
  // Shared-memory push: buffer_ is a view of this worker's gradient segment.
  std::shared_ptr<ShmSegment> segment_;
  // Per tensor: begin -> end of the element ranges received (merged).
  std::vector<std::map<uint64_t, uint64_t>> covered_;
  uint64_t covered_elements_ = 0;
  const char* reject_reason_ = "";
  absl::Time arrival_ = absl::Now();
};

// How shards agree on the global gradient norm: publish this shard's sum of
// squares for a window and get the sum over every shard (in shard order, so
// every shard gets the same bits). Implemented over gRPC in the server layer.
class NormExchange {
 public:
  virtual ~NormExchange() = default;
  // `local[t]`: this shard's part of tensor t's sum of squares. Returns the
  // per-tensor totals over all shards, added in shard order; CANCELLED when
  // the server is shutting down (the step is then abandoned, not taken on a
  // partial norm).
  virtual absl::StatusOr<std::vector<double>> GlobalSums(uint64_t window, const std::vector<double>& local) = 0;
};

struct TrainerOptions {
  // Sharding: this trainer owns flat elements [floor(shard*N/num_shards),
  // floor((shard+1)*N/num_shards)) of the model. `exchange` is required when
  // num_shards > 1 and the job clips.
  uint32_t shard = 0;
  uint32_t num_shards = 1;
  NormExchange* exchange = nullptr;
  // Close windows on a trainer thread instead of in the call that
  // completed them (sharded jobs must: a shard's step waits for its peers,
  // and the worker whose push completed the window must be free to push to
  // them). Forced on when num_shards > 1.
  bool close_async = false;

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
  // A push stream not complete this long after its header is cancelled, so
  // a client that never finishes cannot hold a buffer (or a window) forever.
  absl::Duration push_timeout = absl::Minutes(2);
  // A joined worker with no call and no parked pull for this long is LOST.
  absl::Duration worker_timeout = absl::Seconds(60);
  // Durable state (server/checkpoint.h): when set, the server resumes from
  // the newest valid checkpoint here, and writes one every
  // `checkpoint_every` steps (before the new version is broadcast, so no
  // worker ever holds a version the server could lose), at the end of the
  // job, and on Checkpoint().
  std::string checkpoint_dir;
  uint64_t checkpoint_every = 1;
  int keep_checkpoints = 3;
  // Fault injection for tests: "push:W:N" (SIGKILL after accepting the N-th
  // contribution of window W), "mid_broadcast:W" (after window W's step is
  // durable and the first parked pull has its answer), "after_publish:W"
  // (after window W closed and every parked pull was answered).
  std::vector<std::string> kill_at;
  // The step ledger is appended here (one JSON object a line) when set.
  std::string ledger_path;
  // Shared memory for workers on this host (common/shm.h): segments are
  // made in this tmpfs folder; empty = off (every worker uses gRPC).
  std::string shared_memory_dir;
};

// Counters for /metrics that Status does not carry.
struct TrainerCounters {
  uint64_t bytes_received = 0;  // gradient bytes in pushes
  uint64_t bytes_sent = 0;      // parameter bytes in pulls
  std::map<std::string, uint64_t> rejected_by_reason;
  std::vector<double> step_seconds_bounds;   // histogram bucket upper bounds
  std::vector<uint64_t> step_seconds_counts;  // cumulative, one per bound
  uint64_t step_seconds_count = 0;
  double step_seconds_sum = 0;
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
  // The flat elements this trainer owns (the whole model unsharded).
  uint64_t begin() const { return begin_; }
  uint64_t end() const { return end_; }
  uint64_t size() const { return end_ - begin_; }
  bool shared_memory_on() const { return params_segment_ != nullptr; }
  uint32_t shard() const { return options_.shard; }
  uint32_t num_shards() const { return options_.num_shards; }

  absl::StatusOr<v1::JoinResponse> Join(const v1::JoinRequest& request);
  absl::Status Leave(const v1::LeaveRequest& request);
  // Offers (or records the failure of) shared memory to a worker.
  absl::StatusOr<v1::AttachSharedMemoryResponse> AttachSharedMemory(const v1::AttachSharedMemoryRequest& request);
  // Whether `worker` holds a gradient segment (its pulls may be answered
  // with the header only).
  bool SharedMemoryAttached(uint32_t worker) const;
  // The current version with its chunks built (for gRPC pulls of a version
  // published without them).
  std::shared_ptr<const ParamSnapshot> FullSnapshot();

  // Checks a push header before any data is read: job, worker, membership,
  // duplicate key (ALREADY_EXISTS), stale or future window, sizes. On success
  // reserves a buffer for the push.
  absl::StatusOr<std::unique_ptr<PushSession>> BeginPush(const v1::PushHeader& header);
  // Adds a complete, valid push to its window (re-checking the window and the
  // key under the lock). When it completes the window, the step is applied
  // before this returns.
  absl::StatusOr<PushResult> Commit(std::unique_ptr<PushSession> session);
  // Counts a push that failed after BeginPush (for status and metrics).
  void RecordRejected(uint32_t worker, const std::string& reason);
  void CountBytes(uint64_t received, uint64_t sent);
  TrainerCounters Counters() const;
  // The step ledger: records with from <= step <= to (0 = open end).
  v1::GetStepsResponse GetSteps(uint64_t from, uint64_t to) const;

  // Calls `done` with the snapshot of version >= min_version: at once when it
  // exists (or the job is done), else when it is published. Returns an id for
  // CancelWait; 0 when `done` was already called.
  // With `pushed_key`, a pull that would park fails at once
  // (FAILED_PRECONDITION) when `worker` has no contribution with that key
  // here.
  uint64_t WaitForVersion(uint64_t min_version, SnapshotCallback done, int64_t worker = -1,
                          std::optional<uint64_t> pushed_key = std::nullopt);
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
  // Writes a checkpoint of the current version now (no-op without a
  // checkpoint folder, or when the newest checkpoint is this version).
  absl::Status CheckpointNow();
  // Lines saying which checkpoint the trainer resumed from and which newer
  // ones it skipped as corrupt (empty on a fresh start).
  const std::vector<std::string>& restore_notes() const { return restore_notes_; }

  // A push stream registers its cancel function; the trainer calls it when
  // the push outlives options.push_timeout. Returns a handle for Unregister.
  uint64_t RegisterPushStream(std::function<void()> cancel);
  void UnregisterPushStream(uint64_t handle);

  uint64_t version() const;
  bool done() const;
  // A copy of the current parameters (flat).
  std::vector<float> Parameters() const;

 private:
  friend class PushSession;

  struct WorkerInfo {
    v1::WorkerState state = v1::WORKER_STATE_NEVER_JOINED;
    bool member = false;
    int parked_pulls = 0;
    std::string hostname;
    absl::Time last_seen = absl::InfinitePast();
    uint64_t contributions = 0;
    uint64_t duplicates = 0;
    uint64_t rejected = 0;
    uint64_t last_window = 0;
    bool contributed_ever = false;
    // Transport: its last push came through shared memory; why shared
    // memory failed on the worker's side, if it did.
    bool shared_memory = false;
    std::string shm_failure;
    // Hierarchical reduction: the worker that joins and pushes for this one
    // (-1: itself).
    int64_t covered_by = -1;
    // contribution key -> window it went into; the newest kKeepKeys only.
    std::map<uint64_t, uint64_t> applied_keys;
  };
  struct Slot {
    FloatBuffer grad;
    uint64_t samples = 0;
    uint32_t micro_batches = 0;
    double loss_sum = 0;
    uint64_t key = 0;
    uint32_t attempt = 0;
    uint32_t duplicates = 0;
    double grad_norm = 0;
    absl::Time arrival;
  };
  struct Waiter {
    uint64_t min_version;
    absl::Time deadline;
    SnapshotCallback done;
    int64_t worker;
  };
  struct ClosingWindow {
    std::vector<Slot> slots;          // in worker order
    std::vector<uint32_t> workers;    // their ids
    std::vector<uint32_t> missing;    // expected but absent
    absl::Time last_arrival;
  };

  Trainer(v1::JobSpec spec, ModelLayout layout, TrainerOptions options, FloatBuffer params,
          std::unique_ptr<Optimizer> optimizer, const Checkpoint* restored);

  absl::Status CheckJob(absl::string_view job_id) const;
  absl::Status CheckWorker(uint32_t worker) const;
  absl::Status CheckManifest(const v1::PushHeader& h) const;
  // Checks a push's covered workers against the open window.
  absl::Status CheckCoversLocked(const v1::PushHeader& h) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  FloatBuffer TakeBuffer() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReturnBuffer(FloatBuffer buffer);
  void ReleaseInflight();
  // Reduces the closed window's slots, steps, publishes the next version.
  void CloseWindow(ClosingWindow window) ABSL_LOCKS_EXCLUDED(mu_);
  // When the open window may close now (all expected contributions, or the
  // quorum at the deadline), marks it closing and hands its slots over.
  std::optional<ClosingWindow> TakeWindowIfComplete(bool deadline_passed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts window version_: empty slots, the expected set from membership.
  void OpenWindow(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Elastic() const { return spec_.window().max_workers() > 0; }
  v1::CheckpointState CheckpointStateLocked(uint64_t version) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteCheckpointLocked(const v1::CheckpointState& state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);
  void Restore(const Checkpoint& checkpoint) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeKill(absl::string_view event, uint64_t window, uint64_t count) const;
  void ReleaseWaiter(int64_t worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RejectedLocked(WorkerInfo& w, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A push for `window` arrived after it closed (or a duplicate while open):
  // notes it in that step's ledger record.
  void NoteLateLocked(uint32_t worker, uint64_t window, uint64_t key, const char* outcome)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AppendLedgerLocked(const v1::StepRecord& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<const ParamSnapshot> BuildSnapshot(uint64_t version, bool job_done, double lr, double loss,
                                                     bool chunks = true) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);
  void NotifyListeners() ABSL_LOCKS_EXCLUDED(mu_);
  void ExpireWaitersLoop();
  void WriteFinalParameters() ABSL_EXCLUSIVE_LOCKS_REQUIRED(step_mu_);

  const v1::JobSpec spec_;
  const ModelLayout layout_;
  const TrainerOptions options_;
  const absl::Time started_;
  const uint32_t num_workers_;
  const uint64_t begin_;
  const uint64_t end_;

  // Orders steps and checkpoints; taken before mu_, never while holding it.
  mutable Mutex step_mu_;
  FloatBuffer params_ ABSL_GUARDED_BY(step_mu_);  // a view of params_segment_ when shared memory is on
  FloatBuffer reduced_ ABSL_GUARDED_BY(step_mu_);  // the window's reduced gradient
  // The fused close's pieces: at most kPieceElements each, never across a
  // tensor; offsets local to this trainer's range.
  static constexpr size_t kPieceElements = 16 * 1024;
  struct Piece {
    uint64_t begin, end;
    uint32_t tensor;
  };
  std::vector<Piece> pieces_;
  std::unique_ptr<Optimizer> optimizer_ ABSL_GUARDED_BY(step_mu_);
  uint64_t last_checkpoint_version_ ABSL_GUARDED_BY(step_mu_) = ~uint64_t{0};
  std::vector<std::string> restore_notes_;
  // Shared memory: the parameter segment (null when off: shm_off_reason_
  // says why) and each worker's gradient segment once it attached.
  ShmNonce shm_nonce_{};
  std::unique_ptr<ShmSegment> params_segment_;
  std::string shm_off_reason_;
  std::vector<std::shared_ptr<ShmSegment>> grad_segments_ ABSL_GUARDED_BY(mu_);

  mutable Mutex mu_;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<const ParamSnapshot> snapshot_ ABSL_GUARDED_BY(mu_);
  std::vector<WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::optional<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> expected_ ABSL_GUARDED_BY(mu_);
  uint32_t expected_count_ ABSL_GUARDED_BY(mu_) = 0;
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
  std::vector<uint32_t> last_missing_ ABSL_GUARDED_BY(mu_);
  uint64_t last_step_samples_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_checkpoint_step_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_checkpoint_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::string restored_from_ ABSL_GUARDED_BY(mu_);
  uint32_t restarts_ ABSL_GUARDED_BY(mu_) = 0;
  struct PushStream {
    absl::Time deadline;
    std::function<void()> cancel;
  };
  uint64_t next_push_stream_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, PushStream> push_streams_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::StepRecord> ledger_ ABSL_GUARDED_BY(mu_);
  std::FILE* ledger_file_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::deque<v1::AccuracyPoint> accuracy_history_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> bytes_received_{0};
  std::atomic<uint64_t> bytes_sent_{0};
  std::map<std::string, uint64_t> rejected_by_reason_ ABSL_GUARDED_BY(mu_);
  std::vector<uint64_t> step_seconds_buckets_ ABSL_GUARDED_BY(mu_);
  uint64_t step_seconds_count_ ABSL_GUARDED_BY(mu_) = 0;
  double step_seconds_sum_ ABSL_GUARDED_BY(mu_) = 0;

  Mutex expiry_mu_;
  bool expiry_stop_ ABSL_GUARDED_BY(expiry_mu_) = false;
  std::thread expiry_thread_;
  // close_async: the window handed to the stepper thread.
  std::optional<ClosingWindow> pending_close_ ABSL_GUARDED_BY(mu_);
  bool stepper_stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread stepper_thread_;
  void StepperLoop();
  // Runs CloseWindow now, or hands it to the stepper thread.
  void Close(ClosingWindow window) ABSL_LOCKS_EXCLUDED(mu_);
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_TRAINER_H_
