#include "server/trainer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/data_plan.h"
#include "common/errors.h"
#include "common/files.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "server/checkpoint.h"
#include "server/lr_schedule.h"

namespace gradacc {
namespace {

// Snapshots as large as glibc maps on its own are written into reused
// buffers (a fresh 64 MiB one faulted 16 Ki pages on every step's path);
// smaller ones come from the heap, which reuses freed blocks already
// (pooling the 512 KiB snapshots of 128 shards per process gained nothing
// at 64M across hosts).
std::shared_ptr<BufferPool> SnapshotMemory(size_t bytes) {
  if (bytes < kMappedBlockBytes) return nullptr;
  return std::make_shared<BufferPool>((bytes + sizeof(float) - 1) / sizeof(float), /*max_inflight=*/0, /*keep=*/2);
}

uint32_t WorkerIds(const v1::JobSpec& spec) {
  return spec.window().max_workers() > 0 ? spec.window().max_workers() : spec.window().num_workers();
}

// Refusals that are part of normal operation, not a client's mistake.
bool CountsAsRejected(v1::ErrorReason reason) {
  switch (reason) {
    case v1::ERROR_REASON_DUPLICATE:
    case v1::ERROR_REASON_STALE_WINDOW:
    case v1::ERROR_REASON_PLAN_CHANGED:
    case v1::ERROR_REASON_OVERLOADED:
    case v1::ERROR_REASON_SHUTTING_DOWN:
      return false;
    default:
      return true;
  }
}

// The checkpoint to resume from (nullopt: a fresh start, checked not to be
// a start-over), after removing what killed servers left in the folder.
absl::StatusOr<std::optional<Checkpoint>> FindResumePoint(const TrainerOptions& options,
                                                          std::vector<std::string>* notes) {
  if (options.checkpoint_dir.empty()) {
    if (!options.ledger_path.empty()) GRADACC_RETURN_IF_ERROR(Checkpointer::CheckFreshStart("", options.ledger_path));
    return std::nullopt;
  }
  // Now, not at the first checkpoint: the ledger's default file is in it.
  GRADACC_RETURN_IF_ERROR(MakePrivateDirectory(options.checkpoint_dir));
  *notes = RemoveTemporaryCheckpoints(options.checkpoint_dir);
  auto loaded = LoadNewestCheckpoint(options.checkpoint_dir, notes, options.env);
  if (loaded.ok()) {
    notes->push_back(absl::StrFormat("resuming job '%s' from checkpoint %s/%s at step %d",
                                     loaded->state.job().job_id(), options.checkpoint_dir, loaded->name,
                                     loaded->state.version()));
    return std::optional<Checkpoint>(*std::move(loaded));
  }
  if (loaded.status().code() != absl::StatusCode::kNotFound) {
    for (const std::string& n : *notes) GRADACC_LOG(INFO, "%s", n);
    return loaded.status();
  }
  GRADACC_RETURN_IF_ERROR(Checkpointer::CheckFreshStart(options.checkpoint_dir, options.ledger_path));
  return std::nullopt;
}

}  // namespace

Trainer::Trainer(v1::JobSpec spec, ModelLayout layout, TrainerOptions options, FlatRange range, FloatBuffer params,
                 std::unique_ptr<Optimizer> optimizer, Failpoints failpoints, const Checkpoint* restored)
    : spec_(std::move(spec)),
      layout_(std::move(layout)),
      options_(std::move(options)),
      started_(absl::Now()),
      num_workers_(WorkerIds(spec_)),
      range_(range),
      failpoints_(std::move(failpoints)),
      validator_(&spec_, &layout_, num_workers_, range_, options_.shard, options_.num_shards),
      ledger_(options_.ledger_path, options_.env),
      checkpointer_({options_.checkpoint_dir, options_.checkpoint_every, options_.keep_checkpoints, options_.env},
                    &layout_),
      deadlines_(std::make_unique<DeadlineQueue>()),
      pool_(range_.size(),
            options_.max_inflight_pushes > 0 ? options_.max_inflight_pushes : 2 * static_cast<int>(num_workers_) + 2,
            /*keep=*/3 * num_workers_ + 2),
      snapshot_memory_(SnapshotMemory(SnapshotBytes(layout_, range_, options_.pull_chunk_elements))),
      window_(&spec_, num_workers_, started_, options_.straggler_windows) {
  AccumulatorOptions accumulate = options_.accumulator;
  // Members that may change mid-window (elastic jobs, data plans) leave no
  // fixed order to stream in.
  accumulate.streaming = accumulate.streaming && spec_.window().max_workers() == 0 && !HasDataPlan(spec_);
  accumulate.parallel_min_elements = options_.reducer.parallel_min_elements;
  accumulator_ = std::make_unique<Accumulator>(
      range_.size(), num_workers_, accumulate, &pool_,
      [this](absl::Time when, std::function<void()> fn) { deadlines_->Schedule(when, std::move(fn)); });
  shm_ = std::make_unique<ShmTransport>(options_.shared_memory_dir, options_.num_shards > 1, range_.size(),
                                        num_workers_, params.span(), options_.shm_fast_path);
  if (shm_->on()) params = FloatBuffer::View(shm_->params_data(), range_.size());
  executor_ = std::make_unique<StepExecutor>(&spec_, &layout_, range_, options_.num_shards, std::move(params),
                                             std::move(optimizer), options_.reducer);
  uint32_t restarts = 0;
  if (restored != nullptr) {
    restarts = Checkpointer::CountResume(options_.checkpoint_dir, restored->state.restarts());
    counters_.Restore(restored->state.counters());
    if (options_.exchange != nullptr && restored->state.has_norm_part() && restored->state.version() > 0) {
      // Peers that have not stepped the window before this version yet ask
      // for this shard's part of its norm again.
      options_.exchange->Restore(restored->state.version() - 1, restored->state.norm_part());
    }
    for (uint64_t step : ledger_.Recover(restored->state.unlogged_steps())) {
      restore_notes_.push_back(absl::StrFormat(
          "step %d was durable but missing from the ledger (killed before appending it): appended from checkpoint %s",
          step, restored->name));
    }
  }
  if (restored != nullptr) executor_->RestoreLossScale(restored->state);
  const LockedWindow::Opened opened =
      window_.Start(executor_->loss_scaler().scale(), restored != nullptr ? &restored->state : nullptr,
                    restored != nullptr ? restored->name : "", restarts);
  if (restored != nullptr) {
    checkpointer_.Restored(restored->state.version(), absl::FromUnixMicros(restored->state.written_unix_micros()));
  }
  const uint64_t version = opened.version;
  accumulator_->Open(version);
  applied_version_ = version;
  shm_->Publish(version);
  SnapshotFields fields{version,
                        opened.done,
                        LearningRateAt(spec_.optimizer(), spec_.schedule(), version ? version - 1 : 0),
                        opened.last_loss,
                        opened.plan,
                        executor_->loss_scaler().scale(),
                        executor_->loss_scaler().skipped()};
  publisher_ = std::make_unique<VersionPublisher>(
      MakeSnapshot(layout_, range_, executor_->params(), fields, options_.pull_chunk_elements, true, snapshot_memory_),
      deadlines_.get(), options_.max_pull_wait, /*keep_previous=*/options_.num_shards > 1,
      options_.num_shards > 1 && restored != nullptr ? PreviousVersion(version) : nullptr);
  shm_->PublishHeader(publisher_->Current()->header.header());
  ScheduleDeadline(version, opened.opened);
  thread_ = std::make_unique<TaskThread>();
  if (shm_->bell() != nullptr) {
    fast_path_ = std::make_unique<ShmFastPath>(shm_.get(), [this](uint32_t worker, std::string request, auto done) {
      FastPush(worker, request, std::move(done));
    });
  }
}

Trainer::~Trainer() {
  fast_path_.reset();
  Shutdown();
  thread_.reset();     // runs what was queued, then joins
  deadlines_.reset();  // no timer fires into the parts below from now on
}

InitialParametersSource GivenInitialParameters(FloatBuffer params) {
  auto shared = std::make_shared<const FloatBuffer>(std::move(params));
  return [shared]() -> absl::StatusOr<std::shared_ptr<const FloatBuffer>> { return shared; };
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(v1::JobSpec spec, TrainerOptions options,
                                                         InitialParametersSource initial) {
  std::vector<std::string> notes;
  GRADACC_ASSIGN_OR_RETURN(std::optional<Checkpoint> restored, FindResumePoint(options, &notes));
  if (restored.has_value()) spec = restored->state.job();  // a resumed job keeps its spec
  GRADACC_ASSIGN_OR_RETURN(Failpoints failpoints, Failpoints::Parse(options.kill_at));
  GRADACC_RETURN_IF_ERROR(NormalizeJobSpec(spec));
  GRADACC_ASSIGN_OR_RETURN(ModelLayout layout, ModelLayout::FromSpec(spec.model()));
  options.num_shards = std::max(1u, options.num_shards);
  if (options.shard >= options.num_shards) {
    return absl::InvalidArgumentError(absl::StrFormat("--shard=%d must be below --num_shards=%d", options.shard,
                                                      options.num_shards));
  }
  if (options.num_shards > layout.num_elements()) return absl::InvalidArgumentError("more shards than parameters");
  if (options.num_shards > 1 && HasDataPlan(spec)) {
    return absl::InvalidArgumentError("a job with a data plan (--data_plan) runs on one server, not sharded");
  }
  const auto [begin, end] = ShardRange(layout, options.shard, options.num_shards);
  if (begin >= end) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shard %d of %d would own no parameters (small tensors are not split); use fewer shards", options.shard,
        options.num_shards));
  }
  const FlatRange range{begin, end};
  if (restored.has_value() && (restored->state.shard() != options.shard ||
                               std::max(1u, restored->state.num_shards()) != options.num_shards)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "checkpoint %s belongs to shard %d of %d, not shard %d of %d", restored->name, restored->state.shard(),
        std::max(1u, restored->state.num_shards()), options.shard, options.num_shards));
  }
  FloatBuffer params;
  if (restored.has_value()) {
    params = std::move(restored->params);
  } else {
    std::shared_ptr<const FloatBuffer> whole;
    if (initial == nullptr) {
      GRADACC_ASSIGN_OR_RETURN(FloatBuffer computed, InitialParameters(spec));
      whole = std::make_shared<const FloatBuffer>(std::move(computed));
    } else {
      GRADACC_ASSIGN_OR_RETURN(whole, initial());
      if (whole == nullptr || whole->size() != layout.num_elements()) {
        return absl::InvalidArgumentError(absl::StrFormat("initial parameters have %d elements; the model has %d",
                                                          whole == nullptr ? 0 : whole->size(), layout.num_elements()));
      }
    }
    params = FloatBuffer(range.size());
    std::copy(whole->data() + begin, whole->data() + end, params.data());
  }
  if (params.size() != range.size()) {
    return absl::DataLossError(absl::StrFormat("parameters have %d elements; this shard owns %d", params.size(),
                                               range.size()));
  }
  GRADACC_ASSIGN_OR_RETURN(std::unique_ptr<Optimizer> optimizer, Optimizer::Create(spec.optimizer(), range.size()));
  optimizer->SetTensors(TensorsIn(layout, range).bounds);
  if (restored.has_value()) {
    optimizer->set_steps(restored->state.optimizer_steps());
    if (restored->state.tensor_steps_size() > 0) {
      GRADACC_RETURN_IF_ERROR(optimizer->set_tensor_steps(
          {restored->state.tensor_steps().begin(), restored->state.tensor_steps().end()}));
    }
    for (auto& state : optimizer->StateBuffers()) {
      const std::string& name = state.first;
      auto it = std::find_if(restored->optimizer.begin(), restored->optimizer.end(),
                             [&](const auto& p) { return p.first == name; });
      if (it == restored->optimizer.end()) {
        return absl::DataLossError(absl::StrCat("checkpoint lacks optimizer state '", name, "'"));
      }
      *state.second = std::move(it->second);
    }
  }
  std::unique_ptr<Trainer> trainer(new Trainer(std::move(spec), std::move(layout), std::move(options), range,
                                               std::move(params), std::move(optimizer), std::move(failpoints),
                                               restored.has_value() ? &*restored : nullptr));
  notes.insert(notes.end(), trainer->restore_notes_.begin(), trainer->restore_notes_.end());
  trainer->restore_notes_ = std::move(notes);
  return trainer;
}

absl::Status Trainer::Refused(uint32_t worker, absl::Status status) {
  const v1::ErrorReason reason = ReasonOf(status);
  if (CountsAsRejected(reason)) {
    counters_.Refused(reason);
    window_.CountRejected(worker);
  }
  return status;
}

void Trainer::RecordRefusal(uint32_t worker, const absl::Status& status) { (void)Refused(worker, status); }

absl::StatusOr<v1::JoinResponse> Trainer::Join(const v1::JoinRequest& request) {
  GRADACC_RETURN_IF_ERROR(validator_.CheckJoin(request));
  v1::JoinResponse response;
  GRADACC_ASSIGN_OR_RETURN(const JoinOutcome outcome, window_.Join(request, absl::Now(), &response));
  *response.mutable_job() = spec_;
  response.set_window(outcome.first_window);
  response.set_version(outcome.version);
  response.set_num_elements(layout_.num_elements());
  response.set_shard(options_.shard);
  response.set_num_shards(options_.num_shards);
  response.set_shard_begin(range_.begin);
  response.set_shard_end(range_.end);
  NotifyListeners();
  return response;
}

absl::Status Trainer::Leave(const v1::LeaveRequest& request) {
  GRADACC_RETURN_IF_ERROR(validator_.CheckCaller(request.job_id(), request.worker()));
  std::optional<ClosingWindow> closing;
  GRADACC_RETURN_IF_ERROR(window_.Leave(request.worker(), absl::Now(), &closing));
  if (closing.has_value()) {
    Close(std::move(*closing));
  } else {
    NotifyListeners();
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::AttachSharedMemoryResponse> Trainer::AttachSharedMemory(
    const v1::AttachSharedMemoryRequest& request) {
  GRADACC_RETURN_IF_ERROR(validator_.CheckCaller(request.job_id(), request.worker()));
  const uint32_t id = request.worker();
  if (!request.failure().empty()) {
    // The worker could not use what it was offered: it stays on gRPC, and
    // status says why.
    shm_->Detach(id);
    window_.SharedMemoryFailed(id, request.failure());
    v1::AttachSharedMemoryResponse response;
    response.set_reason("recorded; use gRPC");
    return response;
  }
  const bool stable = spec_.window().max_workers() == 0 && spec_.window().policy() == v1::WindowRule::POLICY_WAIT;
  v1::AttachSharedMemoryResponse offer = shm_->Attach(id, stable);
  if (offer.available()) window_.SharedMemoryOffered(id);
  return offer;
}

bool Trainer::SharedMemoryAttached(uint32_t worker) const { return shm_->Attached(worker); }

absl::StatusOr<std::unique_ptr<PushSession>> Trainer::BeginPush(const v1::PushHeader& h) {
  if (absl::Status s = validator_.CheckPushHeader(h); !s.ok()) return Refused(h.worker(), s);
  std::optional<LateNote> late;
  const absl::Status admitted = window_.Admit(h, absl::Now(), &late);
  if (late.has_value()) ledger_.NoteLate(*late);
  if (!admitted.ok()) return Refused(h.worker(), admitted);
  auto admission = pool_.Admit();
  if (!admission.ok()) return Refused(h.worker(), admission.status());
  std::unique_ptr<PushSession> session;
  if (h.shared_memory()) {
    auto segment = shm_->SegmentFor(h.worker(), h.shared_memory_generation());
    if (!segment.ok()) {
      // A segment of the server this one replaced: the worker attaches
      // again, as every worker does after a restart.
      if (shm_->FromEarlierServer(h.shared_memory_generation())) return segment.status();
      return Refused(h.worker(), segment.status());
    }
    FloatBuffer view = FloatBuffer::View((*segment)->data(), range_.size());
    session = std::make_unique<PushSession>(&layout_, range_, options_.shard, h, std::move(view), nullptr,
                                            std::move(*admission), *std::move(segment));
  } else {
    session = std::make_unique<PushSession>(&layout_, range_, options_.shard, h,
                                            accumulator_->Begin(h.worker(), h.window()), std::move(*admission));
  }
  // An overflow is what loss scaling looks for: the step decides.
  if (spec_.has_loss_scaling()) session->AcceptNonFinite();
  return session;
}

absl::StatusOr<PushResult> Trainer::Commit(std::unique_ptr<PushSession> session) {
  const v1::PushHeader h = session->header();
  if (absl::Status s = session->CheckComplete(); !s.ok()) return Refused(h.worker(), s);
  const absl::Time now = absl::Now();
  Slot slot;
  if (session->accumulated() != nullptr) {
    slot.streamed = true;
    slot.sum_of_squares = session->sum_of_squares();
  } else {
    slot.grad = session->TakeGradient();  // a view of the worker's segment
    slot.segment = session->segment();
  }
  const float* view = slot.grad.data();
  const std::shared_ptr<ShmSegment> segment = slot.segment;
  slot.samples = h.samples();
  slot.micro_batches = h.micro_batches();
  slot.loss_sum = h.loss_sum();
  slot.key = h.contribution_key();
  slot.untouched.assign(h.untouched_tensors().begin(), h.untouched_tensors().end());
  slot.attempt = std::max(1u, h.attempt());
  slot.arrival = now;
  std::optional<LateNote> late;
  absl::StatusOr<Accepted> accepted = window_.Accept(h, &slot, session->shared_memory(), now, &late, [&] {
    // The window's decision and the running sum's agree on who is in.
    const absl::Span<const uint32_t> covers(h.covers().data(), h.covers().size());
    if (session->accumulated() != nullptr) {
      accumulator_->Accepted(session->accumulated(), covers);
    } else {
      accumulator_->AcceptedView(h.worker(), view, segment, covers);
    }
  });
  if (late.has_value()) ledger_.NoteLate(*late);
  if (!accepted.ok()) return Refused(h.worker(), accepted.status());
  // Folds what this acceptance made ready (outside the window mutex).
  accumulator_->Advance();
  if (session->shared_memory()) counters_.AddBytes(range_.size() * sizeof(float), 0);
  session.reset();
  failpoints_.MaybeKill(Failpoints::Event::kPush, accepted->window, accepted->received);
  PushResult result{accepted->window, accepted->closing.has_value(), accepted->received, accepted->expected};
  if (accepted->closing.has_value()) {
    Close(std::move(*accepted->closing));
  } else {
    NotifyListeners();
  }
  return result;
}

uint64_t Trainer::AnswerPush(const PushResult& result, std::function<void(absl::StatusOr<v1::PushResponse>)> done) {
  v1::PushResponse reply;
  reply.set_window(result.window);
  reply.set_contributions_received(result.received);
  reply.set_contributions_expected(result.expected);
  reply.set_closed_window(result.closed_window);
  // A shard's step needs the other shards' parts, which this very worker may
  // still have to push: answer at once (version_published stays false).
  if (!result.closed_window || options_.num_shards > 1) {
    done(std::move(reply));
    return 0;
  }
  // The contract: the version is published when the closing push is
  // answered. Answer once it is.
  return WaitForVersion(result.window + 1, [reply, done = std::move(done)](auto snapshot) mutable {
    if (!snapshot.ok()) {
      done(snapshot.status());
      return;
    }
    reply.set_version_published(true);
    done(std::move(reply));
  });
}

void Trainer::FastPush(uint32_t worker, const std::string& request,
                       std::function<void(absl::StatusOr<v1::PushResponse>)> done) {
  v1::PushHeader h;
  absl::Status refused;
  if (!h.ParseFromString(request)) {
    refused = Refusal(v1::ERROR_REASON_PROTOCOL, "a shared-memory mailbox request that is not a gradacc.v1.PushHeader");
  } else if (h.worker() != worker || !h.shared_memory()) {
    refused = Refusal(v1::ERROR_REASON_PROTOCOL,
                      absl::StrFormat("worker %d's mailbox carries a push of worker %d (shared_memory %s): a mailbox "
                                      "carries its worker's shared-memory pushes only",
                                      worker, h.worker(), h.shared_memory() ? "true" : "false"));
  }
  if (!refused.ok()) {
    RecordRefusal(worker, refused);
    done(refused);
    return;
  }
  absl::StatusOr<std::unique_ptr<PushSession>> session = BeginPush(h);
  if (!session.ok()) {
    done(session.status());  // BeginPush counted it
    return;
  }
  absl::StatusOr<PushResult> result = Commit(*std::move(session));
  if (!result.ok()) {
    done(result.status());
    return;
  }
  AnswerPush(*result, std::move(done));
}

void Trainer::Close(ClosingWindow window) {
  auto shared = std::make_shared<ClosingWindow>(std::move(window));
  thread_->Post([this, shared] { CloseWindow(*shared); });
}

void Trainer::ScheduleDeadline(uint64_t window, absl::Time opened) {
  const v1::WindowRule& rule = spec_.window();
  if (rule.policy() != v1::WindowRule::POLICY_QUORUM) return;
  deadlines_->Schedule(opened + absl::Milliseconds(static_cast<int64_t>(rule.deadline_ms())),
                       [this, window] { OnDeadline(window); });
}

void Trainer::OnDeadline(uint64_t window) {
  std::optional<ClosingWindow> closing = window_.TakeAtDeadline(window);
  if (closing.has_value()) Close(std::move(*closing));
}

std::shared_ptr<const ParamSnapshot> Trainer::PreviousVersion(uint64_t version) {
  if (version == 0) return nullptr;
  absl::StatusOr<Checkpoint> previous = LoadCheckpointOfVersion(options_.checkpoint_dir, version - 1, options_.env);
  if (!previous.ok()) {
    restore_notes_.push_back(absl::StrCat("version ", version - 1, " is not available to workers that need it (",
                                          previous.status().message(), ")"));
    return nullptr;
  }
  SnapshotFields fields;  // sharded jobs have no data plan
  fields.version = version - 1;
  fields.lr = LearningRateAt(spec_.optimizer(), spec_.schedule(), version >= 2 ? version - 2 : 0);
  return MakeSnapshot(layout_, range_, previous->params.span(), fields, options_.pull_chunk_elements, true,
                      snapshot_memory_);
}

uint64_t Trainer::WaitForVersion(uint64_t min_version, SnapshotCallback done, int64_t worker,
                                 std::optional<uint64_t> pushed_key, bool exact) {
  const bool known = worker >= 0 && static_cast<uint64_t>(worker) < num_workers_;
  if (exact) {
    if (std::shared_ptr<const ParamSnapshot> held = publisher_->Exact(min_version); held != nullptr) {
      if (known) window_.Seen(static_cast<uint32_t>(worker), absl::Now());
      done(std::move(held));
      return 0;
    }
    const std::shared_ptr<const ParamSnapshot> now = publisher_->Current();
    const uint64_t current = now->version;
    // A retired version is being replaced by the next one (Retire).
    if (min_version < current || (min_version == current && now->retired)) {
      done(Refusal(v1::ERROR_REASON_VERSION_GONE,
                   absl::StrFormat("version %d is gone from shard %d (it holds versions %d and, when sharded, %d)",
                                   min_version, options_.shard, current, current == 0 ? 0 : current - 1),
                   {{"version", absl::StrCat(current)}}));
      return 0;
    }
  }
  if (known) {
    const std::shared_ptr<const ParamSnapshot> current = publisher_->Current();
    const bool parks = current->version < min_version && !current->job_done();
    const absl::Status held = window_.ParkPull(static_cast<uint32_t>(worker), absl::Now(), parks, pushed_key);
    if (!held.ok()) {
      done(held);
      return 0;
    }
  }
  return publisher_->Wait(min_version, [this, known, worker, done = std::move(done)](auto result) {
    if (known) window_.PullAnswered(static_cast<uint32_t>(worker), absl::Now());
    done(std::move(result));
  });
}

bool Trainer::CancelWait(uint64_t id, int64_t worker) {
  if (!publisher_->Cancel(id)) return false;
  if (worker >= 0 && static_cast<uint64_t>(worker) < num_workers_) {
    window_.PullCancelled(static_cast<uint32_t>(worker));
  }
  return true;
}

bool Trainer::AwaitVersion(uint64_t version, absl::Duration timeout) {
  auto reached = std::make_shared<bool>(false);
  auto mu = std::make_shared<Mutex>();
  const uint64_t id = publisher_->Wait(version, [reached, mu](auto result) {
    MutexLock lock(mu.get());
    *reached = result.ok();
  });
  MutexLock lock(mu.get());
  mu->AwaitWithTimeout(Condition(reached.get()), timeout);
  if (!*reached && id != 0) publisher_->Cancel(id);
  return *reached;
}

std::shared_ptr<const ParamSnapshot> Trainer::Current() const { return publisher_->Current(); }

void Trainer::WithChunks(std::function<void(std::shared_ptr<const ParamSnapshot>)> done) {
  // Between the trainer thread's tasks the parameters are those of the
  // published version.
  thread_->Post([this, done = std::move(done)] {
    std::shared_ptr<const ParamSnapshot> current = publisher_->Current();
    if (!current->has_chunks && applied_version_ == current->version) {
      const v1::ParametersHeader& h = current->header.header();
      const SnapshotFields fields{current->version, h.job_done(), h.lr(), h.loss(), h.plan(), h.loss_scale(),
                                  h.skipped()};
      current = MakeSnapshot(layout_, range_, executor_->params(), fields, options_.pull_chunk_elements, true,
                             snapshot_memory_);
      publisher_->Complete(current);
    }
    done(current);
  });
}

absl::Status Trainer::ReportMetric(const v1::ReportMetricRequest& request) {
  GRADACC_RETURN_IF_ERROR(validator_.CheckCaller(request.job_id(), request.worker()));
  if (!(request.test_accuracy() >= 0 && request.test_accuracy() <= 1)) {
    return Refusal(v1::ERROR_REASON_BAD_VALUE, "test_accuracy must be in [0, 1]");
  }
  window_.RecordAccuracy(request.step(), request.test_accuracy());
  NotifyListeners();
  return absl::OkStatus();
}

uint64_t Trainer::AddListener(Listener listener) { return window_.AddListener(std::move(listener)); }

void Trainer::RemoveListener(uint64_t id) { window_.RemoveListener(id); }

void Trainer::NotifyListeners() {
  for (const std::shared_ptr<Listener>& l : window_.Listeners()) (*l)();
}

void Trainer::Shutdown() {
  if (!window_.Stop()) return;
  thread_->Stop();
  for (auto& ready : publisher_->Stop()) ready();
  NotifyListeners();
}

uint64_t Trainer::RegisterPushStream(std::function<void()> cancel) {
  return deadlines_->Schedule(absl::Now() + options_.push_timeout, std::move(cancel));
}

void Trainer::UnregisterPushStream(uint64_t handle) { deadlines_->Cancel(handle); }

uint64_t Trainer::version() const { return window_.version(); }

bool Trainer::done() const { return window_.done(); }

}  // namespace gradacc
