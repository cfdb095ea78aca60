// Client: what a worker's own training code links against. It is PyTorch's
// gradient accumulation with the rules enforced:
//
//   auto client = Client::Connect(options);        // Join + pull parameters
//   while (!client->done()) {
//     for (k = 0; k < K; ++k) {
//       // forward/backward of a micro-batch on client->params(), adding
//       // d(sum of sample losses)/d(params) into client->grad() ...
//       client->AddMicroBatch(samples, loss_sum);  // loss.backward()
//     }
//     client->Step();   // optimizer.step() + optimizer.zero_grad()
//   }
//
// Step() pushes the window's contribution (chunked; retried with the SAME
// contribution key, so a retry is never counted twice), waits for the server
// to close the window, pulls the new parameters and zeroes the gradient
// buffer. The buffer is only ever zeroed by the library, when a new window
// starts, so it can be neither forgotten nor done in the wrong place.
//
// Every refusal is acted on by its ClientAction (proto/gradacc/v1/error.proto,
// ActionOf in common/errors.h), never by its code or message:
//   ACKNOWLEDGED  success (a duplicate of an accepted push)
//   FIX_REQUEST,  returned at once (e.g. NOTHING_TO_PUSH when Step is called
//   STOP          without a micro-batch; SERVER_BEHIND when a restarted
//                 server holds less than this worker)
//   RETRY         the same call again after a backoff; Step then joins again
//                 to learn where a server that went away stands
//   REJOIN        Join (and attach shared memory) again, then carry on
//   PUSH_AGAIN    push the window's contribution again, same key
//   PULL          pull (the window closed without this contribution: Step
//                 reports it as stale)
//   RECOMPUTE     (a job with a data plan) join again to learn the window's
//                 new plan; Step returns replanned, gradients discarded
// Every loop is bounded by attempts and a deadline and backs off
// exponentially with jitter (common/retry.h); it never installs parameters
// older than the ones it holds.
//
// Thread-compatible: one thread uses a Client at a time. Owns its buffers
// and its gRPC channel. A program that pushes large models through gRPC
// should call KeepFreedMemoryForReuse() (common/buffer.h) first, as
// gradacc-worker does: gRPC's per-message buffers then stop costing fresh
// page faults.
#ifndef GRADACC_WORKER_CLIENT_CLIENT_H_
#define GRADACC_WORKER_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/buffer.h"
#include "common/channel.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "common/retry.h"
#include "common/shm.h"
#include "common/shm_fast_path.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/data.pb.h"

namespace grpc {
class ByteBuffer;
class ClientContext;
template <class W>
class ClientWriter;
template <class R>
class ClientReader;
}  // namespace grpc

namespace gradacc {

struct ClientOptions {
  // host:port; for a sharded job every shard's address, comma-separated, in
  // shard order.
  std::string server;
  // TLS and the bearer token (worker/client/channel.h); server is ignored there.
  ConnectionOptions connection;
  std::string job_id;   // empty = whatever job the server runs
  uint32_t worker = 0;  // this worker's rank
  std::string hostname;
  // How long Connect keeps trying to reach the server.
  absl::Duration connect_timeout = absl::Seconds(30);
  // Deadline of one push attempt, of Join and of Leave.
  absl::Duration rpc_timeout = absl::Seconds(60);
  // How long Step waits for the window to close.
  absl::Duration window_timeout = absl::Minutes(30);
  // Retries of one call (a push, a pull, Leave): attempts and the jittered
  // exponential backoff between them.
  RetryPolicy retry;
  // Joining a server that went away (Connect and rejoin) tries this often
  // (with retry's backoff), within connect_timeout or the window's deadline.
  int max_join_attempts = 100;
  // An elastic newcomer whose first window is the next one: Connect waits
  // for it (true), or returns at once holding the open window's version, not
  // a member of it (member() false; call WaitNextWindow).
  bool wait_for_first_window = true;
  // Recoveries in one Step (rejoin, push again, pull again) before it gives
  // up; each waits a backoff of `retry`.
  int max_recoveries = 20;
  // Elements per pushed chunk (256 KiB by default: measured faster than 1 or
  // 4 MiB on loopback, tests/bench).
  uint64_t chunk_elements = 64 * 1024;
  // Move gradients and parameters through shared memory when the server is
  // on this host (negotiated over gRPC; falls back to gRPC by itself).
  // false = always gRPC.
  bool shared_memory = true;
  // With shared memory, push and pull a window through the server's
  // mailbox and bell (common/shm_fast_path.h) instead of gRPC round trips,
  // when the server offers them.
  bool shm_fast_path = true;
  // How gradients travel through gRPC: f32, or compressed to bf16 / f16
  // (half the bytes; the server widens them and accumulates in f32).
  // Shared memory always moves f32.
  v1::WireFormat wire_format = v1::WIRE_FORMAT_F32;
  // Hierarchical reduction (worker/training/group_client.h): the other workers whose
  // contributions this one adds into its own and pushes (increasing ranks).
  std::vector<uint32_t> covers;
  // For language bindings that hand out views of params() and grad()
  // (worker/python): memory the client stops using (a buffer replaced when
  // shared memory is attached or detached, an unmapped segment) is kept
  // until ReleaseRetiredMemory(), so a view held across Step() never points
  // at freed or unmapped memory. Costs memory only on (re)attach and detach.
  bool retain_released_memory = false;
};

struct StepResult {
  uint64_t window = 0;     // the window that was closed
  uint64_t version = 0;    // the version now held
  bool duplicate = false;  // the server already had this contribution
  // The window closed without this contribution (QUORUM deadline): its
  // gradients were discarded.
  bool stale = false;
  int reconnects = 0;  // times Step joined again (the server went away, restarted or lost this worker)
  int push_attempts = 0;
  double loss = 0;  // the server's mean loss of the closed window
  double lr = 0;
  bool job_done = false;
  // A job with a data plan: the window's plan changed under this worker (the
  // server restarted and the window's members changed). The gradients were
  // discarded and the version is unchanged: compute the window again under
  // plan() when a member of it, else WaitNextWindow().
  bool replanned = false;
  // A job with loss scaling (JobSpec.loss_scaling): the closed window was
  // skipped (its unscaled gradient was not finite: no optimizer step), and
  // the scale of the window now open (multiply the loss by it).
  bool skipped = false;
  float loss_scale = 0;
};

// "f32", "bf16" or "f16" (flags of gradacc-worker and the tests).
absl::StatusOr<v1::WireFormat> ParseWireFormat(absl::string_view name);

class GradaccStubs;

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);
  ~Client();

  const v1::JobSpec& job() const { return job_; }
  const ModelLayout& layout() const { return layout_; }
  uint32_t worker() const { return options_.worker; }
  // The version of params() = the window now open.
  uint64_t version() const { return version_; }
  bool done() const { return done_; }

  // With shared memory and a fixed-membership WAIT job, params() may point
  // into the server's parameter segment (read-only), and grad() into this
  // worker's gradient segment: take the spans again after each Step.
  absl::Span<const float> params() const { return params_.span(); }
  absl::Span<const float> param(int tensor) const;
  // The local gradient buffer (.grad) that micro-batches add into.
  absl::Span<float> grad() { return grad_.span(); }
  absl::Span<float> grad(int tensor);

  // Records one micro-batch whose gradients were added into grad().
  void AddMicroBatch(uint64_t samples, double loss_sum);
  // Adds the totals of other workers' micro-batches whose gradients were
  // added into grad() (hierarchical reduction: options.covers).
  void AddCoveredContribution(uint64_t samples, uint32_t micro_batches, double loss_sum);
  // Drops the open window's gradients and micro-batches: grad() is zeroed,
  // nothing is pushed, the version and the window's contribution key stay.
  // The way to compute the window again after a refusal (NOT_FINITE, ...)
  // or a bad batch. Exactly once still holds: a contribution the server
  // already accepted for this window (a Step that failed after its push was
  // acknowledged) stays the one counted, and the window's next push is
  // acknowledged as its duplicate.
  void Discard();
  // The job's tensors this worker's gradients of the open window do not
  // touch (PushHeader.untouched_tensors: as torch.optim skips a parameter
  // whose .grad is None, the server steps a tensor only when some
  // contribution of the window touched it). Indices into the job's tensors;
  // sorted and deduplicated here; INVALID_ARGUMENT (nothing changed) for an
  // index outside the job. Their gradients must be zero. Reset when the
  // window ends and by Discard; default: every tensor touched.
  absl::Status SetUntouched(std::vector<uint32_t> tensors);
  const std::vector<uint32_t>& untouched() const { return untouched_; }
  uint64_t pending_samples() const { return samples_; }
  uint32_t pending_micro_batches() const { return micro_batches_; }

  // A job with a data plan (JobSpec.data_plan, common/data_plan.h): the
  // plan of window version(): its epoch cursor, samples and members. Empty
  // (id 0) without a plan.
  const v1::WindowPlan& plan() const { return plan_; }
  // A job with loss scaling (JobSpec.loss_scaling): the scale of window
  // version() (ParametersHeader.loss_scale): the gradients added into
  // grad() must be those of the loss times this scale; pushes carry it.
  // 0 in other jobs.
  float loss_scale() const { return loss_scale_; }
  // Whether this worker computes the open window: always without a plan;
  // with one, when it is among the plan's members.
  bool member() const;
  // For a worker that is not a member of the open window: waits (bounded by
  // window_timeout, joining again when the server went away) until a newer
  // version is published and installs it, or until the worker became a
  // member of the open window after all (replanned). An open window with no
  // members (after a server restart) is joined first, which takes it.
  absl::StatusOr<StepResult> WaitNextWindow();

  // Push + wait + pull + zero: the end of a window. Without a micro-batch
  // since the window opened: ERROR_REASON_NOTHING_TO_PUSH at once.
  absl::StatusOr<StepResult> Step();

  // The pieces of Step, for callers that overlap work with the wait.
  // Push retries RETRY refusals (same key) and returns a duplicate
  // (ACKNOWLEDGED) as success with *duplicate = true; any other refusal is
  // returned for the caller to act on. Without a micro-batch:
  // ERROR_REASON_NOTHING_TO_PUSH.
  absl::StatusOr<v1::PushResponse> Push(bool* duplicate = nullptr, int* attempts = nullptr);
  // Pulls version >= min_version (waiting up to `timeout`, retrying RETRY
  // refusals), installs it and, when the version advanced, zeroes the
  // gradient buffer. Parameters older than the ones held are never installed.
  // With `pushed_key` (the key of this worker's acknowledged contribution
  // to window min_version - 1) a restarted server that lost it answers
  // ERROR_REASON_CONTRIBUTION_LOST (PUSH_AGAIN) instead of waiting.
  absl::Status Pull(uint64_t min_version, absl::Duration timeout, v1::ParametersHeader* header = nullptr,
                    std::optional<uint64_t> pushed_key = std::nullopt);

  absl::Status ReportTestAccuracy(double accuracy, uint64_t step);
  absl::StatusOr<v1::Status> GetStatus();
  // Joins again (the server restarted, or the connection broke), telling the
  // server the version held, retrying RETRY refusals with backoff until
  // `deadline`; attaches shared memory again. The response of the shard with
  // the oldest version.
  absl::StatusOr<v1::JoinResponse> Rejoin(absl::Time deadline);
  // Leaves every shard (retrying RETRY refusals within rpc_timeout).
  absl::Status Leave();

  // "shared memory" or "gRPC" (with the reason shared memory is not used).
  std::string transport() const;

  // Frees the memory kept by retain_released_memory; the caller knows no
  // view of it is left.
  void ReleaseRetiredMemory();

 private:
  // One server of the job (the only one unless the job is sharded) and the
  // flat elements it owns.
  struct Shard {
    std::string address;
    std::unique_ptr<GradaccStubs> stubs;
    uint64_t begin = 0, end = 0;
  };

  // "shard i (host:port)" in a sharded job, else the address: what errors
  // name.
  std::string NameOf(const Shard& shard) const;
  // A call to `shard`: PrepareCall, and in a sharded job the shard's index
  // in the x-gradacc-shard metadata (one address may serve several shards).
  void PrepareShardCall(grpc::ClientContext& ctx, const Shard& shard, absl::Time deadline,
                        bool wait_for_ready) const;
  // The shards whose channel cannot connect, named, for an error ("" when
  // none).
  std::string UnreachableShards() const;

  // Where Step goes next.
  enum class StepPhase { kPush, kPull, kRejoin, kDone };

  explicit Client(const ClientOptions& options);
  // Memory the client no longer uses: freed now, or kept
  // (retain_released_memory).
  void Retire(FloatBuffer buffer);
  void Retire(std::unique_ptr<ShmSegment> segment);
  absl::Status OpenChannels(absl::Time give_up);
  void ZeroGradients();
  // Offers taken from the server (AttachSharedMemory) after every join;
  // anything that fails leaves the client on gRPC and tells the server why.
  void SetUpSharedMemory();
  // Back to private buffers (copies of what the segments hold).
  void DetachSharedMemory();
  // A header-only pull answered through shared memory: the parameters of
  // `version` from the segment (copied, or used in place when stable).
  // False when the server moved past them meanwhile.
  bool ReadSharedParameters(uint64_t version);
  // The fast path (common/shm_fast_path.h). A push through the mailbox of
  // a serialized PushHeader that fits it: the Push RPC's answer or error
  // (UNAVAILABLE when the server is gone: the fast path is then off until
  // the next attach).
  absl::Status PushThroughMailbox(const std::string& header, v1::PushResponse* response, absl::Time deadline);
  // A pull through the bell: true with the header of a version >=
  // min_version (or of the finished job) and its parameters in staging_
  // (or in place); false when none came within kShmFastPullWait, the server
  // is gone or the header does not fit: the caller pulls through gRPC.
  bool PullThroughBell(uint64_t min_version, absl::Time deadline, v1::ParametersHeader* header);
  v1::JoinRequest JoinRequestFor(const std::string& job_id) const;
  // One Join call to one shard.
  absl::Status JoinShard(size_t shard, const std::string& job_id, absl::Time deadline, v1::JoinResponse* response);
  // Checks shard i's answer against the job and the other shards.
  absl::Status AdoptShard(size_t shard, const v1::JoinResponse& response);
  absl::Status JoinAndFetch(absl::Time give_up);
  v1::PushRequest PushHeaderMessage() const;
  // Push; with pull_ahead (a sharded job on gRPC, from Step) the shards
  // are pushed in order, as many at once as there are server hosts, and
  // each is pulled (version + 1) as soon as its push is acknowledged; when every shard answered that version,
  // ahead_ holds its header and the pull of StepPull is already done.
  // Gives up at `deadline` (Step's window deadline; Push: window_timeout).
  absl::StatusOr<v1::PushResponse> PushImpl(bool* duplicate, int* attempts, bool pull_ahead, absl::Time deadline);
  // staging_ ready for a pull (before shards are pulled at once).
  void PrepareStaging();
  // Runs fn(i) for every shard at once (one thread each beyond the
  // first); the first failure in shard order.
  absl::Status ForEachShard(const std::function<absl::Status(size_t)>& fn);
  // Pushes to one shard, retrying; `attempts_for_key` counts this key's
  // attempts on it.
  absl::StatusOr<v1::PushResponse> PushShard(Shard& shard, v1::PushRequest header, uint32_t& attempts_for_key,
                                             bool* duplicate, int* attempts, absl::Time deadline);
  // One push stream to one shard: the header, then the chunks it owns.
  absl::Status PushOnce(Shard& shard, v1::PushRequest& header, v1::PushResponse* response, absl::Time deadline);
  // The gradients' bytes in `format`: grad_ itself (f32 on a little-endian
  // host) or wire_scratch_, encoded once per push. Thread-safe (the shards'
  // streams run at once).
  const char* WirePayload(v1::WireFormat format);
  // The chunks a shard owns, as messages over the gradient bytes
  // themselves (f32) or over wire_scratch_ (the compressed formats).
  bool WriteChunks(const Shard& shard, const v1::PushHeader& header, grpc::ClientWriter<grpc::ByteBuffer>& writer);
  // Every shard, on the same version (one attempt each).
  // `exact`: exactly min_version from every shard (PullRequest.exact_version).
  absl::Status PullAllShards(uint64_t min_version, absl::Time deadline, std::optional<uint64_t> pushed_key,
                             v1::ParametersHeader* header, bool exact = false);
  // `group`: the pull is one of several (call_group.h); it fails the group
  // when it fails, and is cancelled when another fails.
  absl::Status PullShard(Shard& shard, uint64_t min_version, absl::Time deadline, v1::ParametersHeader* header,
                         std::optional<uint64_t> pushed_key, bool exact = false, class CallGroup* group = nullptr);
  // Exactly `version` from every shard, installed: a worker that joins while
  // the shards are one version apart takes the older one.
  absl::Status PullExact(uint64_t version, absl::Duration timeout);
  // Reads one pull stream's messages into staging_ (a chunk's payload is
  // copied once, from gRPC's slices to its place); the elements received.
  uint64_t ReadParameters(const Shard& shard, grpc::ClientContext& ctx, grpc::ClientReader<grpc::ByteBuffer>& reader,
                          v1::ParametersHeader* header, bool* have_header);
  // Validates a chunk against the shard's elements and lets `read` place
  // its payload; false when it is malformed.
  bool PlaceChunk(const Shard& shard, uint32_t tensor, uint64_t offset, size_t bytes,
                  const std::function<bool(char*)>& read, uint64_t* received);
  void InstallPulled(const v1::ParametersHeader& header);
  // Step's phases: each returns where to go next, or the status Step ends
  // with; a recoverable failure is kept in `last` for the final error.
  absl::StatusOr<StepPhase> StepPush(StepResult& result, absl::Time deadline, absl::Status& last);
  absl::StatusOr<StepPhase> StepPull(StepResult& result, absl::Time deadline, absl::Status& last);
  absl::StatusOr<StepPhase> StepRejoin(StepResult& result, absl::Time deadline);
  // Step's loop from `phase`.
  absl::StatusOr<StepResult> RunStep(StepPhase phase, StepResult result);
  // A planned job after a join that answered the open window: push again,
  // recompute (replanned) or wait for the next window.
  StepPhase AfterPlannedRejoin(StepResult& result, const v1::JoinResponse& joined);

  const ClientOptions options_;
  std::vector<Shard> shards_;
  size_t server_hosts_ = 1;  // distinct hosts among the shards' addresses
  v1::JobSpec job_;
  ModelLayout layout_;
  uint64_t version_ = 0;
  bool done_ = false;
  FloatBuffer params_;
  FloatBuffer staging_;  // a pull lands here first, then swaps in whole
  FloatBuffer grad_;
  uint64_t samples_ = 0;
  uint32_t micro_batches_ = 0;
  double loss_sum_ = 0;
  std::vector<uint32_t> untouched_;  // of the open window (SetUntouched)
  uint32_t push_attempts_for_key_ = 0;  // across Step's retries of one window
  v1::WindowPlan plan_;                 // the open window's (data plan)
  float loss_scale_ = 0;                // of window version_ (ParametersHeader.loss_scale)
  uint64_t computed_plan_id_ = 0;       // the plan the gradients in grad() were computed on
  Mutex wire_mu_;
  std::vector<char> wire_scratch_ ABSL_GUARDED_BY(wire_mu_);  // the gradients in a compressed wire format
  bool wire_encoded_ ABSL_GUARDED_BY(wire_mu_) = false;       // for the push in progress
  // Shared memory, while attached: grad_ is a view of grad_segment_, and
  // params_ may be a view of params_segment_ (params_stable_).
  std::unique_ptr<ShmSegment> params_segment_;
  std::unique_ptr<ShmSegment> grad_segment_;
  uint64_t grad_generation_ = 0;  // the offer's generation (PushHeader.shared_memory_generation)
  std::unique_ptr<ShmBellSegment> bell_;  // the fast path, when offered and mapped
  bool params_stable_ = false;
  bool pulled_in_place_ = false;  // the last pull left the version in the segment
  std::optional<v1::ParametersHeader> ahead_;  // pulled ahead by PushImpl, in staging_
  std::string shm_note_;          // why not shared memory
  // Kept by Retire when options_.retain_released_memory.
  std::vector<FloatBuffer> retired_buffers_;
  std::vector<std::unique_ptr<ShmSegment>> retired_segments_;
};

}  // namespace gradacc

#endif  // GRADACC_WORKER_CLIENT_CLIENT_H_
