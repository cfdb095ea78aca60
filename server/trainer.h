// Trainer: one job's server side, as a façade over its parts —
//
//   RequestValidator  is the request this job's, from a worker it has?
//   LockedWindow      the window state machine (WindowState: membership,
//                     exactly-once ledger, slots, completeness), progress,
//                     stragglers and listeners, behind the window mutex,
//                     which only it names; each of its methods is whole
//   PushSession       one push's chunks, validated and decoded
//   Accumulator       the window's running sum in worker order, as chunks
//                     arrive; staging for those ahead of their turn
//   BufferPool        whole gradient buffers and the bound on pushes in flight
//   StepExecutor      reduce, agree on the norm, clip, step (Reducer)
//   Checkpointer      durable state, sticky on failure
//   VersionPublisher  the published version and the parked pulls
//   ShmTransport      shared-memory segments and the parameter seqlock
//   StepLedger, Counters
//                     what status, /metrics and the ledger show
//   DeadlineQueue     pull bounds, push timeouts, QUORUM deadlines
//   TaskThread        the trainer thread: steps, checkpoints, snapshots
//
// It knows nothing of gRPC: the services (server/rpc/) are thin adapters,
// and tests drive it directly.
//
// Thread-safety: every public method may be called from any thread. The
// Trainer holds no lock of its own: each part guards itself, and the window
// mutex (LockedWindow's) is held only for the window's decisions (and for
// telling the Accumulator what they were, so the two agree on who is in); the adds
// into the running sum happen outside it, the reduction, the step,
// checkpoints and file I/O on the trainer thread without it; callbacks (pull
// answers, listeners, paused pushes' wakes) never run under any Trainer lock.
#ifndef GRADACC_SERVER_TRAINER_H_
#define GRADACC_SERVER_TRAINER_H_

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
#include "common/buffer.h"
#include "common/env.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/data.pb.h"
#include "server/accumulator.h"
#include "server/buffer_pool.h"
#include "server/checkpointer.h"
#include "server/counters.h"
#include "server/deadline_queue.h"
#include "server/failpoints.h"
#include "server/locked_window.h"
#include "server/norm_exchange.h"
#include "server/push_session.h"
#include "server/reducer.h"
#include "server/request_validator.h"
#include "server/shm_fast_path.h"
#include "server/shm_transport.h"
#include "server/step_executor.h"
#include "server/step_ledger.h"
#include "server/task_thread.h"
#include "server/version_publisher.h"

namespace gradacc {

struct Checkpoint;

struct TrainerOptions {
  // Sharding: this trainer owns flat elements [floor(shard*N/num_shards),
  // floor((shard+1)*N/num_shards)) of the model (common/job_spec.h
  // ShardRange). `exchange` is needed when num_shards > 1 (the global norm).
  uint32_t shard = 0;
  uint32_t num_shards = 1;
  NormExchange* exchange = nullptr;
  // Pushes that may be in flight at once (each holds a model-sized buffer);
  // 0 = 2 * num_workers + 2.
  int max_inflight_pushes = 0;
  // When set, the final parameters are written here (safetensors) when the
  // job completes.
  std::string final_params_path;
  // Elements per chunk of a pulled version.
  uint64_t pull_chunk_elements = 256 * 1024;
  // Parked pulls older than this finish with PULL_TIMEOUT.
  absl::Duration max_pull_wait = absl::Minutes(30);
  // A push stream not complete this long after its header is cancelled, so
  // a client that never finishes cannot hold a buffer (or a window) forever.
  absl::Duration push_timeout = absl::Minutes(2);
  // A joined worker with no call and no parked pull for this long is LOST.
  absl::Duration worker_timeout = absl::Seconds(60);
  // A worker missing from this many closed windows in a row (QUORUM closes
  // windows without it) is reported as a straggler; 0 = never.
  uint32_t straggler_windows = 2;
  // Durable state (server/checkpointer.h): when set, the trainer resumes
  // from the newest valid checkpoint here and writes one every
  // `checkpoint_every` steps before the version is published.
  std::string checkpoint_dir;
  uint64_t checkpoint_every = 1;
  int keep_checkpoints = 3;
  // Failed checkpoint writes are retried after this, doubling up to 10 s.
  absl::Duration checkpoint_retry = absl::Milliseconds(500);
  // Failpoints (server/failpoints.h), for tests.
  std::vector<std::string> kill_at;
  // The step ledger is appended here (one JSON object a line) when set.
  std::string ledger_path;
  // Every file operation of checkpoints and the ledger (null: the real
  // file system; tests inject faults through it: tests/fault_env.h).
  Env* env = nullptr;
  // Shared memory for workers on this host: segments are made in this tmpfs
  // folder; empty = off (every worker uses gRPC).
  std::string shared_memory_dir;
  // Offer the shared-memory fast path (common/shm_fast_path.h) with it.
  bool shm_fast_path = true;
  // Piece size and parallel threshold of the reduction (tests make them
  // small to reach every path).
  ReducerOptions reducer;
  // The running sum's staging bound and stall limit (server/accumulator.h);
  // `streaming` false turns it off (it is off anyway for elastic jobs and
  // data plans); `parallel_min_elements` is the Trainer's to set.
  AccumulatorOptions accumulator;
};

struct PushResult {
  uint64_t window = 0;
  // This push completed the window. The step is then applied on the trainer
  // thread: wait for version window + 1 to see it published (the gRPC push
  // does so on an unsharded server).
  bool closed_window = false;
  uint32_t received = 0;
  uint32_t expected = 0;
};

// Where Trainer::Create gets the whole model's initial parameters: asked
// only when the shard does not resume from a checkpoint, so the shards one
// process serves can share one computation and skip it when all resume.
using InitialParametersSource = std::function<absl::StatusOr<std::shared_ptr<const FloatBuffer>>()>;

// A source that hands out `params` (a caller's own initial parameters).
InitialParametersSource GivenInitialParameters(FloatBuffer params);

class Trainer {
 public:
  using SnapshotCallback = VersionPublisher::Callback;
  using Listener = std::function<void()>;

  // `spec` is normalised here. `initial`: where the whole model's initial
  // parameters come from when the shard does not resume (null: computed from
  // the spec's initialisers); tests give their own.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(v1::JobSpec spec, TrainerOptions options,
                                                         InitialParametersSource initial = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  const v1::JobSpec& spec() const { return spec_; }
  const ModelLayout& layout() const { return layout_; }
  uint64_t begin() const { return range_.begin; }
  uint64_t end() const { return range_.end; }
  uint64_t size() const { return range_.size(); }
  uint32_t shard() const { return options_.shard; }
  uint32_t num_shards() const { return options_.num_shards; }
  const std::string& checkpoint_dir() const { return options_.checkpoint_dir; }
  bool shared_memory_on() const { return shm_->on(); }
  const RequestValidator& validator() const { return validator_; }

  // --- data plane -------------------------------------------------------
  absl::StatusOr<v1::JoinResponse> Join(const v1::JoinRequest& request);
  absl::Status Leave(const v1::LeaveRequest& request);
  absl::StatusOr<v1::AttachSharedMemoryResponse> AttachSharedMemory(const v1::AttachSharedMemoryRequest& request);
  bool SharedMemoryAttached(uint32_t worker) const;

  // Checks a push header before any data is read; on success the session
  // holds a buffer (or the worker's segment) and a place among the pushes
  // in flight.
  absl::StatusOr<std::unique_ptr<PushSession>> BeginPush(const v1::PushHeader& header);
  // Adds a complete, valid push to its window (checked again under the
  // window mutex). When it completes the window, the step is queued.
  absl::StatusOr<PushResult> Commit(std::unique_ptr<PushSession> session);
  // A push that failed after BeginPush (counted for status and metrics).
  void RecordRefusal(uint32_t worker, const absl::Status& status);
  // The answer to a committed push: at once, or (a push that closed an
  // unsharded server's window) once its version is published, with
  // version_published. Returns an id for CancelWait, 0 when `done` ran.
  uint64_t AnswerPush(const PushResult& result, std::function<void(absl::StatusOr<v1::PushResponse>)> done);
  // A PushHeader posted to `worker`'s shared-memory mailbox
  // (server/shm_fast_path.h): BeginPush, Commit and AnswerPush, as the Push
  // RPC of a shared-memory window.
  void FastPush(uint32_t worker, const std::string& request,
                std::function<void(absl::StatusOr<v1::PushResponse>)> done);

  // Calls `done` with the snapshot of a version >= min_version: at once when
  // it exists (or the job is done), else once published. With `pushed_key`,
  // a pull that would park fails at once (CONTRIBUTION_LOST) when `worker`
  // has no contribution with that key here. Returns an id for CancelWait, 0
  // when `done` already ran.
  // `exact` (PullRequest.exact_version): exactly min_version, which a
  // sharded server still holds when it is the version before the current
  // one; an older one fails at once (VERSION_GONE).
  uint64_t WaitForVersion(uint64_t min_version, SnapshotCallback done, int64_t worker = -1,
                          std::optional<uint64_t> pushed_key = std::nullopt, bool exact = false);
  // Drops a parked pull; its callback is not called afterwards. False when
  // it already ran or is running.
  bool CancelWait(uint64_t id, int64_t worker = -1);
  // Blocks until version `version` is published or `timeout` passes.
  bool AwaitVersion(uint64_t version, absl::Duration timeout);
  std::shared_ptr<const ParamSnapshot> Current() const;
  // `snapshot` with its chunks built (published without them because every
  // member was on shared memory): `done` gets the current version's full
  // snapshot, built on the trainer thread.
  void WithChunks(std::function<void(std::shared_ptr<const ParamSnapshot>)> done);

  // --- control plane ----------------------------------------------------
  v1::Status GetStatus() const;
  v1::GetStepsResponse GetSteps(uint64_t from, uint64_t to) const { return ledger_.Get(from, to); }
  absl::Status ReportMetric(const v1::ReportMetricRequest& request);
  TrainerCounters Counters() const;
  void CountBytes(uint64_t received, uint64_t sent) { counters_.AddBytes(received, sent); }
  uint64_t AddListener(Listener listener);
  void RemoveListener(uint64_t id);

  // --- lifecycle --------------------------------------------------------
  // Stops accepting work; parked pulls finish with SHUTTING_DOWN; a step
  // waiting for a checkpoint gives up (it is not published).
  void Shutdown();
  // A step waiting for its checkpoint (or for peer shards) gives up: it is
  // not published. SIGTERM handling calls this before CheckpointNow.
  void StopRetrying() { thread_->Stop(); }
  // Writes a checkpoint of the published version now (no-op without a
  // checkpoint folder, or when the newest checkpoint is this version).
  absl::Status CheckpointNow();
  const std::vector<std::string>& restore_notes() const { return restore_notes_; }
  // A push stream registers its cancel function; it is called when the push
  // outlives options.push_timeout. Returns a handle for Unregister.
  uint64_t RegisterPushStream(std::function<void()> cancel);
  void UnregisterPushStream(uint64_t handle);

  uint64_t version() const;
  bool done() const;
  // A copy of the current parameters (flat, this server's part).
  std::vector<float> Parameters() const { return executor_->Parameters(); }
  // Blocks until the step ledger's file holds every record so far.
  void FlushLedger() { ledger_.Flush(); }
  // The running sum's staging and spills (tests, the scale benchmark).
  AccumulatorStats accumulator_stats() const { return accumulator_->stats(); }

 private:
  // The snapshot of `version` - 1 from its checkpoint (a resumed shard keeps
  // serving it, see PullRequest.exact_version), or null with a note.
  std::shared_ptr<const ParamSnapshot> PreviousVersion(uint64_t version);
  Trainer(v1::JobSpec spec, ModelLayout layout, TrainerOptions options, FlatRange range, FloatBuffer params,
          std::unique_ptr<Optimizer> optimizer, Failpoints failpoints, const Checkpoint* restored);

  absl::Status Refused(uint32_t worker, absl::Status status);
  void Close(ClosingWindow window);
  void CloseWindow(ClosingWindow& window);
  // Writes the checkpoint of `version` when one is due (retrying while it
  // fails); false when shutdown gave up. `record`: the step's ledger record.
  bool MakeDurable(uint64_t version, bool job_done, const v1::StepRecord& record);
  // What a checkpoint of `version` holds besides tensors, with the ledger
  // records not yet in the file (and `record`, when set).
  v1::CheckpointState DurableState(uint64_t version, const v1::StepRecord* record) const;
  void Publish(ClosingWindow& window, v1::StepRecord record, absl::Time stepped);
  // The step's ledger record, without the broadcast time (not known yet).
  v1::StepRecord StepRecordOf(const ClosingWindow& window, const StepReport& report, absl::Time stepped) const;
  void LogStep(v1::StepRecord record, absl::Time opened, absl::Time stepped, absl::Time published);
  v1::StepTiming Timing(const ClosingWindow& window, const StepReport& report) const;
  bool AllOnSharedMemory() const;
  // A QUORUM window's deadline, counted from `opened`.
  void ScheduleDeadline(uint64_t window, absl::Time opened);
  void OnDeadline(uint64_t window);
  void WriteFinalParameters();
  void NotifyListeners();

  const v1::JobSpec spec_;
  const ModelLayout layout_;
  const TrainerOptions options_;
  const absl::Time started_;
  const uint32_t num_workers_;
  const FlatRange range_;
  const Failpoints failpoints_;
  const RequestValidator validator_;
  std::vector<std::string> restore_notes_;

  ::gradacc::Counters counters_;
  StepLedger ledger_;
  Checkpointer checkpointer_;
  std::unique_ptr<DeadlineQueue> deadlines_;
  std::unique_ptr<ShmTransport> shm_;
  // Stopped first (~Trainer): its thread calls FastPush.
  std::unique_ptr<ShmFastPath> fast_path_;
  std::unique_ptr<StepExecutor> executor_;
  std::unique_ptr<VersionPublisher> publisher_;
  BufferPool pool_;
  std::unique_ptr<Accumulator> accumulator_;
  // The published versions' chunk buffers, reused (MakeSnapshot); null
  // for snapshots below kMappedBlockBytes.
  const std::shared_ptr<BufferPool> snapshot_memory_;

  // The window, its membership, progress, stragglers and listeners, and
  // the one lock over them.
  LockedWindow window_;

  // The version the parameters hold (ahead of the published one while a
  // step waits for its checkpoint). Trainer thread only.
  uint64_t applied_version_ = 0;

  // Last: stopped and joined first, while everything it uses still exists.
  std::unique_ptr<TaskThread> thread_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_TRAINER_H_
