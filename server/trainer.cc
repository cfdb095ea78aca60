#include "server/trainer.h"

#include <signal.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/kernels.h"
#include "common/parallel.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "server/lr_schedule.h"

namespace gradacc {
namespace {

// How many applied contribution keys each worker's ledger remembers. A
// duplicate older than that is reported as stale instead of duplicate; it is
// still never counted.
constexpr size_t kKeepKeys = 1024;
constexpr size_t kLossHistory = 32;
constexpr size_t kRateWindow = 32;
constexpr uint64_t kMaxSamples = uint64_t{1} << 40;
constexpr size_t kLedgerKeep = 4096;
constexpr size_t kAccuracyKeep = 256;
const std::vector<double> kStepSecondsBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,  0.5,    1,     2.5,  5,     10,   30};

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

// ---------------------------------------------------------------------------
// PushSession

PushSession::PushSession(Trainer* trainer, const v1::PushHeader& header, FloatBuffer buffer,
                         std::shared_ptr<ShmSegment> segment)
    : trainer_(trainer), header_(header), buffer_(std::move(buffer)), segment_(std::move(segment)) {
  covered_.resize(trainer_->layout().tensors().size());
  if (segment_ != nullptr) covered_elements_ = trainer_->size();
}

PushSession::~PushSession() {
  if (buffer_.size() != 0 && buffer_.owned()) trainer_->ReturnBuffer(std::move(buffer_));
  trainer_->ReleaseInflight();
}

absl::Status PushSession::AddChunk(uint32_t tensor, uint64_t offset, absl::string_view bytes,
                                   absl::string_view name) {
  if (segment_ != nullptr) {
    reject_reason_ = "protocol";
    return absl::InvalidArgumentError(
        "a shared-memory push carries no chunks (its gradients are in the worker's segment)");
  }
  const auto& tensors = trainer_->layout().tensors();
  if (tensor >= tensors.size()) {
    reject_reason_ = "tensor_index";
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk names tensor %d; the model has %d tensors (0..%d)", tensor, tensors.size(), tensors.size() - 1));
  }
  const ModelLayout::Tensor& t = tensors[tensor];
  if (!name.empty() && name != t.name) {
    reject_reason_ = "tensor_name";
    return absl::InvalidArgumentError(
        absl::StrFormat("chunk names tensor %d '%s', but tensor %d of this job is '%s'", tensor, name, tensor, t.name));
  }
  const v1::WireFormat wire = header_.wire_format();
  const size_t width = wire == v1::WIRE_FORMAT_F32 ? sizeof(float) : 2;
  if (bytes.size() % width != 0) {
    reject_reason_ = "chunk_size";
    return absl::InvalidArgumentError(absl::StrFormat("chunk of tensor '%s' has %d bytes, not a multiple of %d (%s)",
                                                      t.name, bytes.size(), width, v1::WireFormat_Name(wire)));
  }
  const uint64_t n = bytes.size() / width;
  if (n == 0) {
    reject_reason_ = "chunk_size";
    return absl::InvalidArgumentError(absl::StrCat("empty chunk for tensor '", t.name, "'"));
  }
  if (offset > t.size || n > t.size - offset) {
    reject_reason_ = "chunk_range";
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk [%d, %d) is past the end of tensor '%s' (%d elements)", offset, offset + n, t.name, t.size));
  }
  // Sharded: only this server's flat elements may be pushed here.
  const uint64_t flat = t.offset + offset;
  if (flat < trainer_->begin() || flat + n > trainer_->end()) {
    reject_reason_ = "outside_shard";
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk [%d, %d) of tensor '%s' (flat [%d, %d)) is outside shard %d's elements [%d, %d)", offset, offset + n,
        t.name, flat, flat + n, trainer_->shard(), trainer_->begin(), trainer_->end()));
  }
  float* const dst = buffer_.data() + (flat - trainer_->begin());
  std::map<uint64_t, uint64_t>& ranges = covered_[tensor];
  auto next = ranges.upper_bound(offset);
  if (next != ranges.end() && next->first < offset + n) {
    reject_reason_ = "overlap";
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk [%d, %d) of tensor '%s' overlaps elements already received at [%d, %d)", offset, offset + n,
        t.name, next->first, next->second));
  }
  auto prev = next == ranges.begin() ? ranges.end() : std::prev(next);
  if (prev != ranges.end() && prev->second > offset) {
    reject_reason_ = "overlap";
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk [%d, %d) of tensor '%s' overlaps elements already received at [%d, %d)", offset, offset + n,
        t.name, prev->first, prev->second));
  }
  // Compressed formats are widened exactly; accumulation is f32 either way.
  const int64_t bad = wire == v1::WIRE_FORMAT_BF16  ? DecodeBf16(bytes.data(), absl::MakeSpan(dst, n))
                      : wire == v1::WIRE_FORMAT_F16 ? DecodeF16(bytes.data(), absl::MakeSpan(dst, n))
                                                    : CopyFromLittleEndian(bytes.data(), absl::MakeSpan(dst, n));
  if (bad >= 0) {
    reject_reason_ = "not_finite";
    return absl::InvalidArgumentError(absl::StrFormat("gradient of tensor '%s' is not finite at element %d (%f)",
                                                      t.name, offset + bad, dst[bad]));
  }
  // Merge with the neighbours so in-order chunking keeps one range per tensor.
  uint64_t begin = offset, end = offset + n;
  if (prev != ranges.end() && prev->second == offset) {
    begin = prev->first;
    ranges.erase(prev);
  }
  if (next != ranges.end() && next->first == end) {
    end = next->second;
    ranges.erase(next);
  }
  ranges[begin] = end;
  covered_elements_ += n;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Trainer

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(v1::JobSpec spec, TrainerOptions options,
                                                         std::optional<FloatBuffer> initial) {
  std::optional<Checkpoint> restored;
  std::vector<std::string> notes;
  if (!options.checkpoint_dir.empty()) {
    auto loaded = LoadNewestCheckpoint(options.checkpoint_dir, &notes);
    if (loaded.ok()) {
      restored = std::move(*loaded);
      // The job is the checkpoint's: a resumed job keeps its spec.
      spec = restored->state.job();
      notes.push_back(absl::StrFormat("resuming job '%s' from checkpoint %s/%s at step %d", spec.job_id(),
                                      options.checkpoint_dir, restored->name, restored->state.version()));
    } else if (loaded.status().code() != absl::StatusCode::kNotFound) {
      for (const std::string& n : notes) absl::FPrintF(stderr, "gradacc-server: %s\n", n);
      return loaded.status();
    }
  }
  GRADACC_RETURN_IF_ERROR(NormalizeJobSpec(spec));
  GRADACC_ASSIGN_OR_RETURN(ModelLayout layout, ModelLayout::FromSpec(spec.model()));
  if (options.num_shards == 0) options.num_shards = 1;
  if (options.shard >= options.num_shards) {
    return absl::InvalidArgumentError(absl::StrFormat("--shard=%d must be below --num_shards=%d", options.shard,
                                                      options.num_shards));
  }
  if (options.num_shards > layout.num_elements()) {
    return absl::InvalidArgumentError("more shards than parameters");
  }
  const auto [begin, end] = ShardRange(layout, options.shard, options.num_shards);
  if (begin >= end) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shard %d of %d would own no parameters (small tensors are not split); use fewer shards", options.shard,
        options.num_shards));
  }
  if (restored.has_value() && (restored->state.shard() != options.shard ||
                               std::max(1u, restored->state.num_shards()) != options.num_shards)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "checkpoint %s belongs to shard %d of %d, not shard %d of %d", restored->name, restored->state.shard(),
        std::max(1u, restored->state.num_shards()), options.shard, options.num_shards));
  }
  FloatBuffer params;
  if (restored.has_value()) {
    params = std::move(restored->params);
  } else if (initial.has_value()) {
    if (initial->size() != layout.num_elements()) {
      return absl::InvalidArgumentError(absl::StrFormat("initial parameters have %d elements; the model has %d",
                                                        initial->size(), layout.num_elements()));
    }
    params = std::move(*initial);
  } else {
    GRADACC_ASSIGN_OR_RETURN(params, InitialParameters(spec));
  }
  if (!restored.has_value() && (begin != 0 || end != layout.num_elements())) {
    FloatBuffer part(end - begin);
    std::copy(params.data() + begin, params.data() + end, part.data());
    params = std::move(part);
  }
  if (params.size() != end - begin) {
    return absl::DataLossError(absl::StrFormat("parameters have %d elements; this shard owns %d", params.size(),
                                               end - begin));
  }
  GRADACC_ASSIGN_OR_RETURN(std::unique_ptr<Optimizer> optimizer, Optimizer::Create(spec.optimizer(), end - begin));
  if (restored.has_value()) {
    optimizer->set_steps(restored->state.optimizer_steps());
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
  std::unique_ptr<Trainer> trainer(new Trainer(std::move(spec), std::move(layout), std::move(options),
                                               std::move(params), std::move(optimizer),
                                               restored.has_value() ? &*restored : nullptr));
  trainer->restore_notes_ = std::move(notes);
  return trainer;
}

Trainer::Trainer(v1::JobSpec spec, ModelLayout layout, TrainerOptions options, FloatBuffer params,
                 std::unique_ptr<Optimizer> optimizer, const Checkpoint* restored)
    : spec_(std::move(spec)),
      layout_(std::move(layout)),
      options_(std::move(options)),
      started_(absl::Now()),
      num_workers_(spec_.window().max_workers() > 0 ? spec_.window().max_workers()
                                                    : spec_.window().num_workers()),
      begin_(ShardRange(layout_, options_.shard, std::max(1u, options_.num_shards)).first),
      end_(ShardRange(layout_, options_.shard, std::max(1u, options_.num_shards)).second),
      params_(std::move(params)),
      reduced_(params_.size()),
      optimizer_(std::move(optimizer)) {
  MutexLock step_lock(&step_mu_);
  MutexLock lock(&mu_);
  if (options_.shared_memory_dir.empty()) {
    shm_off_reason_ = "off on this server (--shared_memory_dir is empty)";
  } else if (options_.num_shards > 1) {
    shm_off_reason_ = "sharded servers move data through gRPC only";
  } else {
    ShmSegment::RemoveStale(options_.shared_memory_dir);
    shm_nonce_ = ShmSegment::NewNonce();
    auto segment = ShmSegment::Create(ShmSegment::NewPath(options_.shared_memory_dir, shm_nonce_, "params"),
                                      size(), shm_nonce_);
    if (segment.ok()) {
      // The parameters live in the segment from now on: the optimizer writes
      // them there and co-located workers read them there.
      std::copy(params_.data(), params_.data() + params_.size(), (*segment)->data());
      params_ = FloatBuffer::View((*segment)->data(), size());
      params_segment_ = *std::move(segment);
    } else {
      shm_off_reason_ = std::string(segment.status().message());
      absl::FPrintF(stderr, "gradacc-server: shared memory off: %s\n", shm_off_reason_);
    }
  }
  grad_segments_.resize(num_workers_);
  for (size_t i = 0; i < layout_.tensors().size(); ++i) {
    const ModelLayout::Tensor& t = layout_.tensors()[i];
    const uint64_t lo = std::max(t.offset, begin_), hi = std::min(t.offset + t.size, end_);
    for (uint64_t b = lo; b < hi; b += kPieceElements) {
      pieces_.push_back({b - begin_, std::min<uint64_t>(hi, b + kPieceElements) - begin_, static_cast<uint32_t>(i)});
    }
  }
  workers_.resize(num_workers_);
  slots_.resize(num_workers_);
  expected_.assign(num_workers_, false);
  if (!Elastic()) {
    for (WorkerInfo& w : workers_) w.member = true;
  }
  max_inflight_ = options_.max_inflight_pushes > 0 ? options_.max_inflight_pushes
                                                   : 2 * static_cast<int>(num_workers_) + 2;
  if (restored != nullptr) {
    Restore(*restored);
    last_checkpoint_version_ = version_;
  }
  OpenWindow(started_);
  if (params_segment_ != nullptr) params_segment_->header()->seq.store(2 * version_, std::memory_order_release);
  snapshot_ = BuildSnapshot(version_, version_ >= spec_.total_steps(),
                            LearningRateAt(spec_.optimizer(), spec_.schedule(), version_ ? version_ - 1 : 0),
                            last_loss_);
  expiry_thread_ = std::thread([this] { ExpireWaitersLoop(); });
  if (options_.close_async || options_.num_shards > 1) stepper_thread_ = std::thread([this] { StepperLoop(); });
}

void Trainer::StepperLoop() {
  while (true) {
    ClosingWindow window;
    {
      MutexLock lock(&mu_);
      mu_.Await(Condition(
          +[](Trainer* t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu_) { return t->pending_close_.has_value() || t->stepper_stop_; },
          this));
      if (!pending_close_.has_value()) return;
      window = std::move(*pending_close_);
      pending_close_.reset();
    }
    CloseWindow(std::move(window));
  }
}

void Trainer::Close(ClosingWindow window) {
  if (!stepper_thread_.joinable()) {
    CloseWindow(std::move(window));
    return;
  }
  MutexLock lock(&mu_);
  pending_close_ = std::move(window);
}

Trainer::~Trainer() {
  Shutdown();
  {
    MutexLock lock(&expiry_mu_);
    expiry_stop_ = true;
  }
  if (expiry_thread_.joinable()) expiry_thread_.join();
  {
    MutexLock lock(&mu_);
    stepper_stop_ = true;
  }
  if (stepper_thread_.joinable()) stepper_thread_.join();
  MutexLock lock(&mu_);
  if (ledger_file_ != nullptr) std::fclose(ledger_file_);
}

void Trainer::Restore(const Checkpoint& c) {
  const v1::CheckpointState& s = c.state;
  version_ = s.version();
  for (const v1::CheckpointWorker& cw : s.workers()) {
    if (cw.worker() >= num_workers_) continue;
    WorkerInfo& w = workers_[cw.worker()];
    w.member = Elastic() ? cw.member() : true;
    // Joined workers stay joined: they reconnect and carry on. Whether they
    // are alive shows in their last-seen time.
    w.state = cw.state() == v1::WORKER_STATE_PUSHED || cw.state() == v1::WORKER_STATE_LOST
                  ? v1::WORKER_STATE_JOINED
                  : cw.state();
    w.hostname = cw.hostname();
    w.contributions = cw.contributions();
    w.last_window = cw.last_window();
    w.contributed_ever = cw.contributions() > 0;
    w.last_seen = absl::Now();
    w.applied_keys.insert(cw.applied_keys().begin(), cw.applied_keys().end());
  }
  for (const v1::LossPoint& p : s.loss_history()) loss_history_.push_back(p);
  last_loss_ = s.last_loss();
  test_accuracy_ = s.test_accuracy();
  test_accuracy_step_ = s.test_accuracy_step();
  restarts_ = s.restarts() + 1;
  restored_from_ = absl::StrCat(options_.checkpoint_dir, "/", c.name);
  last_checkpoint_step_ = s.version();
  last_checkpoint_time_ = absl::FromUnixMicros(s.written_unix_micros());
}

void Trainer::OpenWindow(absl::Time now) {
  for (auto& slot : slots_) slot.reset();
  received_ = 0;
  samples_received_ = 0;
  expected_count_ = 0;
  for (uint32_t i = 0; i < num_workers_; ++i) {
    expected_[i] = workers_[i].member && workers_[i].state != v1::WORKER_STATE_LEFT;
    if (!Elastic()) expected_[i] = true;
    expected_count_ += expected_[i];
    if (workers_[i].state == v1::WORKER_STATE_PUSHED) workers_[i].state = v1::WORKER_STATE_JOINED;
  }
  window_opened_ = now;
}

std::optional<Trainer::ClosingWindow> Trainer::TakeWindowIfComplete(bool deadline_passed) {
  if (closing_ || stopping_ || version_ >= spec_.total_steps() || received_ == 0) return std::nullopt;
  const v1::WindowRule& rule = spec_.window();
  bool complete = received_ >= expected_count_;
  if (Elastic() && received_ < std::max(1u, rule.min_workers())) complete = false;
  if (!complete && deadline_passed && rule.policy() == v1::WindowRule::POLICY_QUORUM &&
      received_ >= std::max(1u, rule.quorum())) {
    complete = true;
  }
  if (!complete) return std::nullopt;
  ClosingWindow w;
  for (uint32_t i = 0; i < num_workers_; ++i) {
    if (slots_[i].has_value()) {
      w.slots.push_back(std::move(*slots_[i]));
      w.workers.push_back(i);
      slots_[i].reset();
    } else if (expected_[i]) {
      w.missing.push_back(i);
    }
  }
  w.last_arrival = absl::Now();
  closing_ = true;
  return w;
}

void Trainer::MaybeKill(absl::string_view event, uint64_t window, uint64_t count) const {
  for (const std::string& k : options_.kill_at) {
    const std::vector<std::string> parts = absl::StrSplit(k, ':');
    if (parts.empty() || parts[0] != event) continue;
    uint64_t w = 0, n = 0;
    if (parts.size() >= 2 && (!absl::SimpleAtoi(parts[1], &w) || w != window)) continue;
    if (parts.size() >= 3 && (!absl::SimpleAtoi(parts[2], &n) || n != count)) continue;
    absl::FPrintF(stderr, "gradacc-server: failpoint %s reached: SIGKILL\n", k);
    std::fflush(stderr);
    ::raise(SIGKILL);
  }
}

absl::Status Trainer::CheckJob(absl::string_view job_id) const {
  if (!job_id.empty() && job_id != spec_.job_id()) {
    return absl::NotFoundError(
        absl::StrCat("unknown job '", job_id, "'; this server runs job '", spec_.job_id(), "'"));
  }
  return absl::OkStatus();
}

absl::Status Trainer::CheckWorker(uint32_t worker) const {
  if (worker >= num_workers_) {
    return absl::InvalidArgumentError(absl::StrFormat("unknown worker %d: job '%s' has %d workers (0..%d)", worker,
                                                      spec_.job_id(), num_workers_, num_workers_ - 1));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::JoinResponse> Trainer::Join(const v1::JoinRequest& request) {
  GRADACC_RETURN_IF_ERROR(CheckJob(request.job_id()));
  GRADACC_RETURN_IF_ERROR(CheckWorker(request.worker()));
  for (uint32_t c : request.covers()) {
    GRADACC_RETURN_IF_ERROR(CheckWorker(c));
    if (c == request.worker()) return absl::InvalidArgumentError("a worker cannot cover itself");
  }
  if (request.covers_size() > 0 && Elastic()) {
    return absl::FailedPreconditionError("hierarchical reduction (covers) needs a fixed membership, not an elastic job");
  }
  v1::JoinResponse response;
  {
    MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("server is shutting down");
    const uint32_t id = request.worker();
    workers_[id].covered_by = -1;  // it speaks for itself now
    for (uint32_t c : request.covers()) {
      WorkerInfo& cw = workers_[c];
      cw.state = slots_[c].has_value() ? v1::WORKER_STATE_PUSHED : v1::WORKER_STATE_JOINED;
      cw.hostname = request.hostname();
      cw.last_seen = absl::Now();
      cw.covered_by = id;
    }
    WorkerInfo& w = workers_[id];
    w.state = slots_[id].has_value() ? v1::WORKER_STATE_PUSHED : v1::WORKER_STATE_JOINED;
    w.hostname = request.hostname();
    w.last_seen = absl::Now();
    uint64_t first_window = version_;
    if (Elastic() && !w.member) {
      w.member = true;
      // Joining a window nobody has contributed to yet joins it; otherwise
      // the worker's first window is the next one.
      if (received_ == 0 && !closing_) {
        expected_[id] = true;
        ++expected_count_;
      } else if (!expected_[id]) {
        first_window = version_ + 1;
      }
    } else if (Elastic() && !expected_[id] && !slots_[id].has_value()) {
      first_window = version_ + 1;
    }
    *response.mutable_job() = spec_;
    response.set_window(first_window);
    response.set_version(version_);
    response.set_num_elements(layout_.num_elements());
    response.set_job_done(version_ >= spec_.total_steps());
    response.set_shard(options_.shard);
    response.set_num_shards(options_.num_shards);
    response.set_shard_begin(begin_);
    response.set_shard_end(end_);
  }
  NotifyListeners();
  return response;
}

absl::Status Trainer::Leave(const v1::LeaveRequest& request) {
  GRADACC_RETURN_IF_ERROR(CheckJob(request.job_id()));
  GRADACC_RETURN_IF_ERROR(CheckWorker(request.worker()));
  std::optional<ClosingWindow> closing;
  {
    MutexLock lock(&mu_);
    WorkerInfo& w = workers_[request.worker()];
    if (w.state == v1::WORKER_STATE_NEVER_JOINED) {
      return absl::FailedPreconditionError(absl::StrCat("worker ", request.worker(), " never joined"));
    }
    w.state = v1::WORKER_STATE_LEFT;
    w.last_seen = absl::Now();
    for (WorkerInfo& covered : workers_) {
      if (covered.covered_by == static_cast<int64_t>(request.worker())) {
        covered.state = v1::WORKER_STATE_LEFT;
        covered.last_seen = w.last_seen;
      }
    }
    if (Elastic()) {
      w.member = false;
      // A member leaving before it contributed is no longer waited for.
      if (expected_[request.worker()] && !slots_[request.worker()].has_value() && !closing_) {
        expected_[request.worker()] = false;
        --expected_count_;
        closing = TakeWindowIfComplete(false);
      }
    }
  }
  if (closing.has_value()) {
    Close(std::move(*closing));
  } else {
    NotifyListeners();
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::AttachSharedMemoryResponse> Trainer::AttachSharedMemory(
    const v1::AttachSharedMemoryRequest& request) {
  GRADACC_RETURN_IF_ERROR(CheckJob(request.job_id()));
  GRADACC_RETURN_IF_ERROR(CheckWorker(request.worker()));
  v1::AttachSharedMemoryResponse response;
  MutexLock lock(&mu_);
  WorkerInfo& w = workers_[request.worker()];
  if (!request.failure().empty()) {
    // The worker could not use what it was offered: it stays on gRPC, and
    // status says why.
    w.shm_failure = request.failure().substr(0, 200);
    w.shared_memory = false;
    grad_segments_[request.worker()].reset();
    response.set_reason("recorded; use gRPC");
    return response;
  }
  if (params_segment_ == nullptr) {
    response.set_reason(shm_off_reason_);
    return response;
  }
  std::shared_ptr<ShmSegment>& segment = grad_segments_[request.worker()];
  if (segment == nullptr) {
    auto created = ShmSegment::Create(
        ShmSegment::NewPath(options_.shared_memory_dir, shm_nonce_, absl::StrCat("w", request.worker())), size(),
        shm_nonce_);
    if (!created.ok()) {
      response.set_reason(std::string(created.status().message()));
      return response;
    }
    segment = *std::move(created);
  }
  w.shm_failure.clear();
  response.set_available(true);
  response.set_params_path(params_segment_->path());
  response.set_grad_path(segment->path());
  response.set_nonce_hi(shm_nonce_[0]);
  response.set_nonce_lo(shm_nonce_[1]);
  response.set_num_elements(size());
  response.set_params_stable(!Elastic() && spec_.window().policy() == v1::WindowRule::POLICY_WAIT);
  return response;
}

bool Trainer::SharedMemoryAttached(uint32_t worker) const {
  MutexLock lock(&mu_);
  return worker < grad_segments_.size() && grad_segments_[worker] != nullptr;
}

std::shared_ptr<const ParamSnapshot> Trainer::FullSnapshot() {
  // Under step_mu_ the parameters are exactly those of the current snapshot.
  MutexLock step_lock(&step_mu_);
  std::shared_ptr<const ParamSnapshot> current;
  {
    MutexLock lock(&mu_);
    current = snapshot_;
  }
  if (current->has_chunks) return current;
  const v1::ParametersHeader& h = current->header.header();
  auto full = BuildSnapshot(current->version, h.job_done(), h.lr(), h.loss());
  MutexLock lock(&mu_);
  if (snapshot_ == current) snapshot_ = full;
  return full;
}

FloatBuffer Trainer::TakeBuffer() {
  if (!free_buffers_.empty()) {
    FloatBuffer b = std::move(free_buffers_.back());
    free_buffers_.pop_back();
    return b;
  }
  return FloatBuffer(size());
}

void Trainer::ReturnBuffer(FloatBuffer buffer) {
  MutexLock lock(&mu_);
  // Keep at most what can be in use at once; the rest goes back to the OS.
  if (free_buffers_.size() < static_cast<size_t>(max_inflight_) + num_workers_) {
    free_buffers_.push_back(std::move(buffer));
  }
}

void Trainer::ReleaseInflight() {
  MutexLock lock(&mu_);
  --inflight_pushes_;
}

void Trainer::RecordRejected(uint32_t worker, const std::string& reason) {
  MutexLock lock(&mu_);
  ++rejected_;
  ++rejected_by_reason_[reason.empty() ? "other" : reason];
  if (worker < num_workers_) ++workers_[worker].rejected;
}

void Trainer::RejectedLocked(WorkerInfo& w, const std::string& reason) {
  ++rejected_;
  ++w.rejected;
  ++rejected_by_reason_[reason];
}

void Trainer::CountBytes(uint64_t received, uint64_t sent) {
  bytes_received_ += received;
  bytes_sent_ += sent;
}

TrainerCounters Trainer::Counters() const {
  TrainerCounters c;
  c.bytes_received = bytes_received_;
  c.bytes_sent = bytes_sent_;
  MutexLock lock(&mu_);
  c.rejected_by_reason = rejected_by_reason_;
  c.step_seconds_bounds = kStepSecondsBounds;
  uint64_t cumulative = 0;
  for (uint64_t n : step_seconds_buckets_) c.step_seconds_counts.push_back(cumulative += n);
  c.step_seconds_count = step_seconds_count_;
  c.step_seconds_sum = step_seconds_sum_;
  return c;
}

void Trainer::NoteLateLocked(uint32_t worker, uint64_t window, uint64_t key, const char* outcome) {
  if (window >= version_) {
    // A duplicate of a contribution in the open window: it goes in the
    // record when the window closes.
    if (window == version_ && slots_[worker].has_value()) ++slots_[worker]->duplicates;
    return;
  }
  for (auto it = ledger_.rbegin(); it != ledger_.rend(); ++it) {
    if (it->window() != window) continue;
    for (v1::ContributionRecord& c : *it->mutable_contributions()) {
      if (c.worker() == worker && c.contribution_key() == key) c.set_duplicates(c.duplicates() + 1);
    }
    v1::LateRecord* late = it->add_late();
    late->set_worker(worker);
    late->set_contribution_key(key);
    late->set_arrival_unix_micros(absl::ToUnixMicros(absl::Now()));
    late->set_outcome(outcome);
    AppendLedgerLocked(*it);
    return;
  }
}

void Trainer::AppendLedgerLocked(const v1::StepRecord& record) {
  if (options_.ledger_path.empty()) return;
  if (ledger_file_ == nullptr) {
    ledger_file_ = std::fopen(options_.ledger_path.c_str(), "a");
    if (ledger_file_ == nullptr) {
      absl::FPrintF(stderr, "gradacc-server: cannot append to ledger '%s'\n", options_.ledger_path);
      return;
    }
  }
  std::string line;
  google::protobuf::util::JsonPrintOptions json;
  json.add_whitespace = false;
  (void)google::protobuf::util::MessageToJsonString(record, &line, json);
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), ledger_file_);
  std::fflush(ledger_file_);
}

v1::GetStepsResponse Trainer::GetSteps(uint64_t from, uint64_t to) const {
  v1::GetStepsResponse r;
  MutexLock lock(&mu_);
  r.set_oldest_kept(ledger_.empty() ? 0 : ledger_.front().step());
  for (const v1::StepRecord& rec : ledger_) {
    if (rec.step() >= from && (to == 0 || rec.step() <= to)) *r.add_steps() = rec;
  }
  return r;
}

absl::Status Trainer::CheckCoversLocked(const v1::PushHeader& h) const {
  for (int i = 0; i < h.covers_size(); ++i) {
    const uint32_t c = h.covers(i);
    if (c >= num_workers_ || c == h.worker() || (i > 0 && c <= h.covers(i - 1))) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "covers must list other workers of this job in increasing order; got %s for worker %d",
          absl::StrJoin(h.covers(), ","), h.worker()));
    }
    if (workers_[c].covered_by != static_cast<int64_t>(h.worker())) {
      return absl::FailedPreconditionError(
          absl::StrFormat("worker %d pushes for worker %d without having joined for it", h.worker(), c));
    }
    if (!expected_[c]) {
      return absl::FailedPreconditionError(absl::StrFormat("worker %d is not a member of window %d", c, version_));
    }
    if (slots_[c].has_value()) {
      return absl::FailedPreconditionError(
          absl::StrFormat("worker %d already contributed to window %d", c, version_));
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::CheckManifest(const v1::PushHeader& h) const {
  const auto& tensors = layout_.tensors();
  if (static_cast<size_t>(h.tensors_size()) != tensors.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("push lists %d tensors; job '%s' has %d", h.tensors_size(),
                                                      spec_.job_id(), tensors.size()));
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    const v1::TensorShape& got = h.tensors(static_cast<int>(i));
    if (got.name() != tensors[i].name) {
      return absl::InvalidArgumentError(absl::StrFormat("push lists tensor %d as '%s'; the job's tensor %d is '%s'",
                                                        i, got.name(), i, tensors[i].name));
    }
    if (!std::equal(got.shape().begin(), got.shape().end(), tensors[i].shape.begin(), tensors[i].shape.end())) {
      return absl::InvalidArgumentError(absl::StrFormat("push says tensor '%s' has shape [%s]; the job says [%s]",
                                                        got.name(), absl::StrJoin(got.shape(), ","),
                                                        absl::StrJoin(tensors[i].shape, ",")));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PushSession>> Trainer::BeginPush(const v1::PushHeader& h) {
  if (absl::Status s = CheckJob(h.job_id()); !s.ok()) {
    MutexLock lock(&mu_);
    ++rejected_;
    ++rejected_by_reason_["unknown_job"];
    return s;
  }
  if (absl::Status s = CheckWorker(h.worker()); !s.ok()) {
    MutexLock lock(&mu_);
    ++rejected_;
    ++rejected_by_reason_["unknown_worker"];
    return s;
  }
  absl::Status invalid;
  std::string reason;
  if (h.num_elements() != size()) {
    invalid = absl::InvalidArgumentError(
        options_.num_shards > 1
            ? absl::StrFormat("push declares %d elements; shard %d of %d owns %d (elements [%d, %d))",
                              h.num_elements(), options_.shard, options_.num_shards, size(), begin_, end_)
            : absl::StrFormat("push declares %d elements; the model has %d", h.num_elements(), size()));
    reason = "size";
  } else if (h.samples() > kMaxSamples) {
    invalid = absl::InvalidArgumentError(absl::StrCat("push declares an absurd sample count ", h.samples()));
    reason = "samples";
  } else if (!std::isfinite(h.loss_sum())) {
    invalid = absl::InvalidArgumentError("push declares a loss sum that is NaN or Inf");
    reason = "not_finite";
  } else if (!v1::WireFormat_IsValid(h.wire_format())) {
    invalid = absl::InvalidArgumentError(absl::StrCat("unknown wire format ", h.wire_format()));
    reason = "wire_format";
  } else if (h.tensors_size() > 0) {
    invalid = CheckManifest(h);
    reason = "manifest";
  }
  MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("server is shutting down");
  WorkerInfo& w = workers_[h.worker()];
  if (!invalid.ok()) {
    RejectedLocked(w, reason);
    return invalid;
  }
  if (w.state == v1::WORKER_STATE_NEVER_JOINED || w.state == v1::WORKER_STATE_LEFT) {
    RejectedLocked(w, "not_joined");
    return absl::FailedPreconditionError(absl::StrFormat("worker %d pushed before joining job '%s'; call Join first",
                                                         h.worker(), spec_.job_id()));
  }
  w.last_seen = absl::Now();
  auto key = w.applied_keys.find(h.contribution_key());
  if (key != w.applied_keys.end()) {
    ++duplicates_;
    ++w.duplicates;
    NoteLateLocked(h.worker(), key->second, h.contribution_key(), "duplicate");
    return absl::AlreadyExistsError(absl::StrFormat(
        "duplicate: contribution key %d of worker %d was already applied to window %d; acknowledged, not counted",
        h.contribution_key(), h.worker(), key->second));
  }
  if (version_ >= spec_.total_steps()) {
    RejectedLocked(w, "job_done");
    return absl::FailedPreconditionError(
        absl::StrFormat("job '%s' is done (%d steps); no more contributions", spec_.job_id(), version_));
  }
  if (h.window() < version_) {
    ++stale_;
    NoteLateLocked(h.worker(), h.window(), h.contribution_key(), "stale");
    return absl::AbortedError(absl::StrFormat(
        "stale: window %d is closed; the open window is %d (pull version %d and recompute)", h.window(), version_,
        version_));
  }
  if (h.window() > version_) {
    RejectedLocked(w, "future_window");
    return absl::FailedPreconditionError(
        absl::StrFormat("window %d is not open yet; the open window is %d", h.window(), version_));
  }
  if (slots_[h.worker()].has_value()) {
    RejectedLocked(w, "second_contribution");
    return absl::FailedPreconditionError(absl::StrFormat(
        "worker %d already contributed to window %d under another key", h.worker(), version_));
  }
  if (!expected_[h.worker()]) {
    RejectedLocked(w, "not_member");
    return absl::FailedPreconditionError(absl::StrFormat(
        "worker %d is not a member of window %d (it joined after the window started); its first window is %d",
        h.worker(), version_, version_ + 1));
  }
  if (closing_) {
    ++stale_;
    return absl::AbortedError(absl::StrFormat("stale: window %d is closing without this contribution", version_));
  }
  if (absl::Status covers = CheckCoversLocked(h); !covers.ok()) {
    RejectedLocked(w, "covers");
    return covers;
  }
  if (inflight_pushes_ >= max_inflight_) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("%d pushes already in flight; retry later", inflight_pushes_));
  }
  if (h.shared_memory()) {
    std::shared_ptr<ShmSegment> segment = grad_segments_[h.worker()];
    if (segment == nullptr) {
      RejectedLocked(w, "not_attached");
      return absl::FailedPreconditionError(absl::StrFormat(
          "worker %d pushed through shared memory but holds no gradient segment of this server; attach again",
          h.worker()));
    }
    ++inflight_pushes_;
    FloatBuffer view = FloatBuffer::View(segment->data(), size());
    return std::unique_ptr<PushSession>(new PushSession(this, h, std::move(view), std::move(segment)));
  }
  ++inflight_pushes_;
  return std::unique_ptr<PushSession>(new PushSession(this, h, TakeBuffer()));
}

absl::StatusOr<PushResult> Trainer::Commit(std::unique_ptr<PushSession> session) {
  const v1::PushHeader& h = session->header();
  if (session->covered_elements_ != size()) {
    // Find the first gap to name it.
    std::string gap;
    for (size_t i = 0; i < layout_.tensors().size() && gap.empty(); ++i) {
      const auto& t = layout_.tensors()[i];
      // The part of this tensor the server owns.
      const uint64_t lo = std::max(t.offset, begin_), hi = std::min(t.offset + t.size, end_);
      if (lo >= hi) continue;
      uint64_t expect = lo - t.offset;
      for (const auto& [b, e] : session->covered_[i]) {
        if (b != expect) break;
        expect = e;
      }
      if (expect != hi - t.offset) gap = absl::StrFormat("tensor '%s' from element %d", t.name, expect);
    }
    RecordRejected(h.worker(), "missing_chunks");
    return absl::InvalidArgumentError(absl::StrFormat(
        "incomplete push: received %d of %d elements; missing %s; nothing was counted",
        session->covered_elements_, size(), gap));
  }
  PushResult result;
  std::optional<ClosingWindow> closing;
  absl::Time now = absl::Now();
  if (session->segment_ != nullptr) {
    // Chunks were checked as they arrived; a segment is checked here.
    const int64_t bad = FirstNonFiniteParallel(session->buffer_.span());
    if (bad >= 0) {
      const auto& t = *std::find_if(layout_.tensors().rbegin(), layout_.tensors().rend(),
                                    [&](const ModelLayout::Tensor& t) { return t.offset <= uint64_t(bad); });
      RecordRejected(h.worker(), "not_finite");
      return absl::InvalidArgumentError(absl::StrFormat(
          "gradient of tensor '%s' is not finite at element %d (%f); nothing was counted", t.name,
          uint64_t(bad) - t.offset, session->buffer_[bad]));
    }
  }
  {
    MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("server is shutting down");
    WorkerInfo& w = workers_[h.worker()];
    auto key = w.applied_keys.find(h.contribution_key());
    if (key != w.applied_keys.end()) {
      ++duplicates_;
      ++w.duplicates;
      NoteLateLocked(h.worker(), key->second, h.contribution_key(), "duplicate");
      return absl::AlreadyExistsError(absl::StrFormat(
          "duplicate: contribution key %d of worker %d was already applied to window %d; acknowledged, not counted",
          h.contribution_key(), h.worker(), key->second));
    }
    if (h.window() != version_ || closing_) {
      ++stale_;
      NoteLateLocked(h.worker(), h.window(), h.contribution_key(), "stale");
      return absl::AbortedError(absl::StrFormat(
          "stale: window %d closed while the push was in flight; the open window is %d", h.window(), version_));
    }
    if (slots_[h.worker()].has_value()) {
      RejectedLocked(w, "second_contribution");
      return absl::FailedPreconditionError(absl::StrFormat(
          "worker %d already contributed to window %d under another key", h.worker(), version_));
    }
    if (absl::Status covers = CheckCoversLocked(h); !covers.ok()) {
      RejectedLocked(w, "covers");
      return covers;
    }
    // Hierarchical: every covered worker has contributed through this push
    // (an empty slot; the gradient is in the pusher's).
    for (uint32_t c : h.covers()) {
      WorkerInfo& cw = workers_[c];
      Slot covered;
      covered.key = h.contribution_key();
      covered.attempt = std::max(1u, h.attempt());
      covered.arrival = now;
      slots_[c] = std::move(covered);
      ++received_;
      cw.applied_keys[h.contribution_key()] = version_;
      if (cw.applied_keys.size() > kKeepKeys) cw.applied_keys.erase(cw.applied_keys.begin());
      cw.state = v1::WORKER_STATE_PUSHED;
      cw.last_seen = now;
      ++cw.contributions;
      cw.last_window = version_;
      cw.contributed_ever = true;
      ++accepted_;
    }
    Slot slot;
    slot.key = h.contribution_key();
    slot.attempt = std::max(1u, h.attempt());
    slot.arrival = now;
    slot.grad = std::move(session->buffer_);
    slot.samples = h.samples();
    slot.micro_batches = h.micro_batches();
    slot.loss_sum = h.loss_sum();
    slots_[h.worker()] = std::move(slot);
    ++received_;
    samples_received_ += h.samples();
    w.applied_keys[h.contribution_key()] = version_;
    if (w.applied_keys.size() > kKeepKeys) w.applied_keys.erase(w.applied_keys.begin());
    w.state = v1::WORKER_STATE_PUSHED;
    w.shared_memory = session->segment_ != nullptr;
    w.last_seen = now;
    ++w.contributions;
    w.last_window = version_;
    w.contributed_ever = true;
    ++accepted_;
    result.window = version_;
    result.received = received_;
    result.expected = expected_count_;
    closing = TakeWindowIfComplete(false);
    result.closed_window = closing.has_value();
  }
  if (session->segment_ != nullptr) CountBytes(size() * sizeof(float), 0);
  session.reset();
  MaybeKill("push", result.window, result.received);
  if (closing.has_value()) {
    Close(std::move(*closing));
  } else {
    NotifyListeners();
  }
  return result;
}

void Trainer::CloseWindow(ClosingWindow window) {
  MutexLock step_lock(&step_mu_);
  const absl::Time t0 = absl::Now();
  uint64_t version;
  absl::Time opened;
  {
    MutexLock lock(&mu_);
    version = version_;
    opened = window_opened_;
  }
  std::vector<Slot>& slots = window.slots;
  // Deterministic reduction: always in worker order, whatever the arrival
  // order (and whatever the transport: a slot is a pooled buffer filled
  // from gRPC chunks or a view of the worker's shared-memory segment).
  FloatBuffer& acc = reduced_;
  uint64_t samples = 0;
  double loss_sum = 0;
  std::vector<const float*> sources;
  for (const Slot& slot : slots) {
    if (slot.grad.size() == 0) continue;  // covered by another worker's push
    sources.push_back(slot.grad.data());
    samples += slot.samples;
    loss_sum += slot.loss_sum;
  }
  float divisor = 0;
  switch (spec_.reduction()) {
    case v1::REDUCTION_MEAN_OVER_SAMPLES:
      divisor = static_cast<float>(samples);
      break;
    case v1::REDUCTION_MEAN_OVER_CONTRIBUTIONS:
      divisor = static_cast<float>(slots.size());
      break;
    default:
      break;
  }
  const bool no_gradient =
      sources.empty() || (spec_.reduction() == v1::REDUCTION_MEAN_OVER_SAMPLES && samples == 0);
  const double lr = LearningRateAt(spec_.optimizer(), spec_.schedule(), version);
  std::vector<double> sums(layout_.tensors().size(), 0.0);
  absl::Time t1;
  // Without clipping (and unsharded) the step needs no norm first: one pass
  // over memory reduces a piece into a cache-sized buffer, adds its squares
  // to its tensor's norm and steps it. Otherwise reduce, norm, clip, step.
  const bool fused = spec_.clipping().max_norm() <= 0 && options_.num_shards <= 1 && !no_gradient;
  if (fused) {
    // Co-located workers see the segment's seq turn odd: the parameters of
    // `version` are being overwritten.
    if (params_segment_ != nullptr) params_segment_->header()->seq.store(2 * version + 1, std::memory_order_release);
    const Optimizer::Piece step = optimizer_->Prepare(params_.span(), lr);
    std::vector<double> partial(pieces_.size(), 0.0);
    // Each contribution's own norm (for the ledger), from the same pass.
    std::vector<double> slot_partial(pieces_.size() * sources.size(), 0.0);
    ParallelFor(
        pieces_.size(),
        [&](size_t first, size_t last) {
          std::vector<float> g(kPieceElements);
          std::vector<const float*> at(sources.size());
          for (size_t i = first; i < last; ++i) {
            const Piece& piece = pieces_[i];
            const size_t n = piece.end - piece.begin;
            for (size_t k = 0; k < sources.size(); ++k) at[k] = sources[k] + piece.begin;
            SumInOrder(absl::MakeSpan(g.data(), n), at, divisor);
            for (size_t k = 0; k < sources.size(); ++k) {
              slot_partial[i * sources.size() + k] = SumOfSquares(absl::MakeConstSpan(at[k], n));
            }
            partial[i] = SumOfSquares(absl::MakeConstSpan(g.data(), n));
            step(piece.begin, piece.end, g.data());
          }
        },
        /*min_per_thread=*/kParallelMinElements / kPieceElements, /*align=*/1);
    // Per tensor, its pieces' sums in order: deterministic for any thread
    // count (the norm is reported, not used).
    for (size_t i = 0; i < pieces_.size(); ++i) sums[pieces_[i].tensor] += partial[i];
    std::vector<double> slot_sums(sources.size(), 0.0);
    for (size_t i = 0; i < pieces_.size(); ++i) {
      for (size_t k = 0; k < sources.size(); ++k) slot_sums[k] += slot_partial[i * sources.size() + k];
    }
    for (size_t j = 0, k = 0; j < slots.size(); ++j) {
      if (slots[j].grad.size() != 0) slots[j].grad_norm = std::sqrt(slot_sums[k++]);
    }
    t1 = absl::Now();
  } else {
    for (Slot& slot : slots) {
      if (slot.grad.size() != 0) slot.grad_norm = std::sqrt(SumOfSquaresParallel(slot.grad.span()));
    }
    if (no_gradient) {
      // A window without samples (possible only when every worker's slots
      // were empty) has no gradient.
      std::fill(acc.data(), acc.data() + acc.size(), 0.0f);
    } else {
      SumInOrder(acc.span(), sources, divisor);
    }
    t1 = absl::Now();
    // torch.nn.utils.clip_grad_norm_ in f32: the norm of the per-tensor norms,
    // coef = (1 / (norm + 1e-6)) * max_norm, applied when below 1.
    // Per tensor: a sequential f32 sum (small tensors, as torch), or a double
    // sum rounded once (large ones). Sharded, every shard adds its part of each
    // tensor and the parts are summed in shard order; small tensors are never
    // split, so the result is what one server computes.
    for (size_t i = 0; i < layout_.tensors().size(); ++i) {
      const ModelLayout::Tensor& t = layout_.tensors()[i];
      const uint64_t lo = std::max(t.offset, begin_), hi = std::min(t.offset + t.size, end_);
      if (lo >= hi) continue;
      const auto part = absl::MakeConstSpan(acc.data() + (lo - begin_), hi - lo);
      sums[i] = t.size <= kSequentialSumOfSquaresLimit ? double{SumOfSquaresF32(part)} : SumOfSquaresParallel(part);
    }
  }
  if (options_.num_shards > 1 && options_.exchange != nullptr) {
    // Every shard must step on the same norm: wait for the peers (retrying
    // while they are away), or abandon the step when shutting down; its
    // contributions are not in any checkpoint and get pushed again.
    while (true) {
      auto global = options_.exchange->GlobalSums(version, sums);
      if (global.ok()) {
        sums = *std::move(global);
        break;
      }
      if (global.status().code() == absl::StatusCode::kCancelled) {
        absl::FPrintF(stderr, "gradacc-server: window %d abandoned: %s\n", version, global.status().message());
        return;
      }
      absl::FPrintF(stderr, "gradacc-server: waiting for the other shards' norms of window %d: %s\n", version,
                    global.status().ToString());
      absl::SleepFor(absl::Seconds(1));
    }
  }
  std::vector<float> norms;
  norms.reserve(sums.size());
  for (double v : sums) norms.push_back(std::sqrt(static_cast<float>(v)));
  const float grad_norm = std::sqrt(SumOfSquaresF32(norms));
  float clipped_norm = grad_norm;
  if (!fused) {
    if (spec_.clipping().max_norm() > 0) {
      const float coef = (1.0f / (grad_norm + 1e-6f)) * static_cast<float>(spec_.clipping().max_norm());
      if (coef < 1.0f) {
        // The span is taken here, where step_mu_ is known to be held (the
        // thread-safety analysis does not follow it into the lambda).
        const absl::Span<float> grads = acc.span();
        ParallelFor(grads.size(), [&](size_t b, size_t e) { ScaleInPlace(grads.subspan(b, e - b), coef); });
        clipped_norm = grad_norm * coef;
      }
    }
    if (params_segment_ != nullptr) params_segment_->header()->seq.store(2 * version + 1, std::memory_order_release);
    optimizer_->Step(params_.span(), acc.span(), lr);
  }
  const absl::Time t2 = absl::Now();

  const uint64_t new_version = version + 1;
  const bool job_done = new_version >= spec_.total_steps();
  const double loss = samples > 0 ? loss_sum / static_cast<double>(samples) : 0.0;
  // The chunks of a version are built only when a member may pull it
  // through gRPC (any member not on shared memory).
  bool all_shared_memory = params_segment_ != nullptr;
  {
    MutexLock lock(&mu_);
    for (uint32_t i = 0; i < num_workers_ && all_shared_memory; ++i) {
      if (expected_[i] && (!workers_[i].shared_memory || grad_segments_[i] == nullptr)) all_shared_memory = false;
    }
  }
  auto snapshot = BuildSnapshot(new_version, job_done, lr, loss, /*chunks=*/!all_shared_memory);

  std::vector<SnapshotCallback> ready;
  v1::CheckpointState durable;
  const bool checkpoint = !options_.checkpoint_dir.empty() &&
                          (job_done || new_version % std::max<uint64_t>(1, options_.checkpoint_every) == 0);
  {
    MutexLock lock(&mu_);
    for (Slot& s : slots) {
      if (s.grad.owned() && s.grad.size() == size() &&
          free_buffers_.size() < static_cast<size_t>(max_inflight_) + num_workers_) {
        free_buffers_.push_back(std::move(s.grad));
      }
    }
    last_loss_ = loss;
    last_grad_norm_ = grad_norm;
    last_missing_ = window.missing;
    last_step_samples_ = samples;
    v1::LossPoint point;
    point.set_step(new_version);
    point.set_loss(loss);
    loss_history_.push_back(point);
    if (loss_history_.size() > kLossHistory) loss_history_.pop_front();
    recent_steps_.emplace_back(t2, samples);
    if (recent_steps_.size() > kRateWindow) recent_steps_.pop_front();
    last_timing_.set_wait_seconds(Seconds(window.last_arrival - opened));
    last_timing_.set_reduce_seconds(Seconds(t1 - t0));
    last_timing_.set_apply_seconds(Seconds(t2 - t1));
    if (checkpoint) durable = CheckpointStateLocked(new_version);
  }
  // The new version is durable before anyone can see it: nothing below
  // publishes it until the checkpoint is on disk.
  if (checkpoint) {
    absl::Status s = WriteCheckpointLocked(durable);
    if (!s.ok()) absl::FPrintF(stderr, "gradacc-server: checkpoint failed: %s\n", s.ToString());
  }
  if (params_segment_ != nullptr) params_segment_->header()->seq.store(2 * new_version, std::memory_order_release);
  {
    MutexLock lock(&mu_);
    version_ = new_version;
    snapshot_ = snapshot;
    closing_ = false;
    OpenWindow(absl::Now());
  }
  if (job_done && !options_.final_params_path.empty()) WriteFinalParameters();
  {
    MutexLock lock(&mu_);
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.min_version <= new_version || job_done) {
        ReleaseWaiter(it->second.worker);
        ready.push_back(std::move(it->second.done));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // mid_broadcast: the version is published and (when anyone was parked)
  // one pull has its answer, the others not yet.
  if (ready.empty()) MaybeKill("mid_broadcast", version, 0);
  for (size_t i = 0; i < ready.size(); ++i) {
    ready[i](snapshot);
    if (i == 0) MaybeKill("mid_broadcast", version, 0);
  }
  {
    MutexLock lock(&mu_);
    const absl::Time published = absl::Now();
    last_timing_.set_broadcast_seconds(Seconds(published - t2));
    const double step_seconds = Seconds(published - opened);
    step_seconds_buckets_.resize(kStepSecondsBounds.size(), 0);
    for (size_t b = 0; b < kStepSecondsBounds.size(); ++b) {
      if (step_seconds <= kStepSecondsBounds[b]) {
        ++step_seconds_buckets_[b];
        break;
      }
    }
    ++step_seconds_count_;
    step_seconds_sum_ += step_seconds;
    v1::StepRecord record;
    record.set_step(new_version);
    record.set_window(version);
    record.set_closed_unix_micros(absl::ToUnixMicros(t2));
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& slot = slots[i];
      v1::ContributionRecord* c = record.add_contributions();
      c->set_worker(window.workers[i]);
      c->set_window(version);
      c->set_contribution_key(slot.key);
      c->set_micro_batches(slot.micro_batches);
      c->set_samples(slot.samples);
      c->set_loss_sum(slot.loss_sum);
      c->set_grad_norm(slot.grad_norm);
      c->set_arrival_unix_micros(absl::ToUnixMicros(slot.arrival));
      c->set_attempt(slot.attempt);
      c->set_duplicates(slot.duplicates);
    }
    record.set_samples(samples);
    record.set_loss(loss);
    record.set_grad_norm(grad_norm);
    record.set_grad_norm_clipped(clipped_norm);
    record.set_lr(lr);
    *record.mutable_timing() = last_timing_;
    for (uint32_t m : window.missing) record.add_missing_workers(m);
    AppendLedgerLocked(record);
    ledger_.push_back(std::move(record));
    if (ledger_.size() > kLedgerKeep) ledger_.pop_front();
  }
  MaybeKill("after_publish", version, 0);
  NotifyListeners();
}

v1::CheckpointState Trainer::CheckpointStateLocked(uint64_t version) const {
  v1::CheckpointState s;
  *s.mutable_job() = spec_;
  s.set_version(version);
  for (uint32_t i = 0; i < num_workers_; ++i) {
    const WorkerInfo& w = workers_[i];
    if (w.state == v1::WORKER_STATE_NEVER_JOINED && w.applied_keys.empty()) continue;
    v1::CheckpointWorker* cw = s.add_workers();
    cw->set_worker(i);
    cw->set_member(w.member);
    cw->set_state(w.state);
    cw->set_hostname(w.hostname);
    cw->set_contributions(w.contributions);
    cw->set_last_window(w.last_window);
    for (const auto& [key, win] : w.applied_keys) {
      // Keys of the open window are not durable: its contributions are not
      // in the checkpoint and must be pushed again after a restart.
      if (win < version) (*cw->mutable_applied_keys())[key] = win;
    }
  }
  for (const v1::LossPoint& p : loss_history_) *s.add_loss_history() = p;
  s.set_last_loss(last_loss_);
  s.set_test_accuracy(test_accuracy_);
  s.set_test_accuracy_step(test_accuracy_step_);
  s.set_restarts(restarts_);
  s.set_written_unix_micros(absl::ToUnixMicros(absl::Now()));
  return s;
}

absl::Status Trainer::WriteCheckpointLocked(const v1::CheckpointState& state) {
  std::vector<std::pair<std::string, const FloatBuffer*>> buffers;
  for (auto& [name, buf] : optimizer_->StateBuffers()) buffers.emplace_back(name, buf);
  v1::CheckpointState s = state;
  s.set_optimizer_steps(optimizer_->steps());
  s.set_shard(options_.shard);
  s.set_num_shards(options_.num_shards);
  s.set_shard_begin(begin_);
  s.set_shard_end(end_);
  GRADACC_RETURN_IF_ERROR(
      WriteCheckpoint(options_.checkpoint_dir, layout_, s, params_.span(), buffers, options_.keep_checkpoints));
  last_checkpoint_version_ = state.version();
  MutexLock lock(&mu_);
  last_checkpoint_step_ = state.version();
  last_checkpoint_time_ = absl::Now();
  return absl::OkStatus();
}

absl::Status Trainer::CheckpointNow() {
  if (options_.checkpoint_dir.empty()) return absl::OkStatus();
  MutexLock step_lock(&step_mu_);
  v1::CheckpointState state;
  {
    MutexLock lock(&mu_);
    // The open window's contributions are not in a checkpoint: workers push
    // them again after a restart.
    state = CheckpointStateLocked(version_);
  }
  if (state.version() == last_checkpoint_version_) return absl::OkStatus();
  return WriteCheckpointLocked(state);
}

void Trainer::ReleaseWaiter(int64_t worker) {
  if (worker >= 0 && static_cast<uint32_t>(worker) < num_workers_) {
    WorkerInfo& w = workers_[worker];
    if (w.parked_pulls > 0) --w.parked_pulls;
    w.last_seen = absl::Now();
  }
}

uint64_t Trainer::RegisterPushStream(std::function<void()> cancel) {
  MutexLock lock(&mu_);
  const uint64_t id = next_push_stream_++;
  push_streams_[id] = PushStream{absl::Now() + options_.push_timeout, std::move(cancel)};
  return id;
}

void Trainer::UnregisterPushStream(uint64_t handle) {
  MutexLock lock(&mu_);
  push_streams_.erase(handle);
}

std::shared_ptr<const ParamSnapshot> Trainer::BuildSnapshot(uint64_t version, bool job_done, double lr,
                                                            double loss, bool chunks) const {
  auto snap = std::make_shared<ParamSnapshot>();
  snap->version = version;
  v1::ParametersHeader* h = snap->header.mutable_header();
  h->set_version(version);
  h->set_step(version);
  h->set_job_done(job_done);
  h->set_lr(lr);
  h->set_loss(loss);
  h->set_num_elements(size());
  snap->has_chunks = chunks;
  if (!chunks) return snap;
  const uint64_t chunk = std::max<uint64_t>(1, options_.pull_chunk_elements);
  for (size_t i = 0; i < layout_.tensors().size(); ++i) {
    const ModelLayout::Tensor& t = layout_.tensors()[i];
    const uint64_t lo = std::max(t.offset, begin_), hi = std::min(t.offset + t.size, end_);
    if (lo >= hi) continue;
    for (uint64_t off = lo - t.offset; off < hi - t.offset; off += chunk) {
      const uint64_t n = std::min(chunk, hi - t.offset - off);
      v1::PullResponse& r = snap->chunks.emplace_back();
      v1::GradientChunk* c = r.mutable_chunk();
      c->set_tensor(static_cast<uint32_t>(i));
      c->set_offset(off);
      std::string* data = c->mutable_data();
      data->resize(n * sizeof(float));
      CopyToLittleEndian(absl::MakeConstSpan(params_.data() + (t.offset + off - begin_), n), data->data());
    }
  }
  return snap;
}

void Trainer::WriteFinalParameters() {
  std::vector<NamedTensor> tensors;
  std::map<std::string, std::string> meta = {{"job_id", spec_.job_id()},
                                             {"step", absl::StrCat(optimizer_->steps())},
                                             {"format", "pt"}};
  if (options_.num_shards > 1) {
    // A shard's part: flat elements [shard_begin, shard_end) of the model.
    tensors.push_back({"shard_params", {size()}, params_.span()});
    meta["shard"] = absl::StrCat(options_.shard);
    meta["num_shards"] = absl::StrCat(options_.num_shards);
    meta["shard_begin"] = absl::StrCat(begin_);
    meta["shard_end"] = absl::StrCat(end_);
  } else {
    for (const ModelLayout::Tensor& t : layout_.tensors()) {
      tensors.push_back({t.name, t.shape, absl::MakeConstSpan(params_.data() + t.offset, t.size)});
    }
  }
  absl::Status s = WriteSafetensorsFile(options_.final_params_path, tensors, meta);
  if (!s.ok()) {
    absl::FPrintF(stderr, "gradacc-server: cannot write final parameters: %s\n", s.ToString());
  } else {
    absl::FPrintF(stderr, "gradacc-server: final parameters written to %s\n", options_.final_params_path);
    MutexLock lock(&mu_);
    final_written_ = true;
  }
}

uint64_t Trainer::WaitForVersion(uint64_t min_version, SnapshotCallback done, int64_t worker,
                                 std::optional<uint64_t> pushed_key) {
  std::shared_ptr<const ParamSnapshot> ready;
  absl::Status lost;
  bool stopping;
  {
    MutexLock lock(&mu_);
    stopping = stopping_;
    if (worker >= 0 && static_cast<uint32_t>(worker) < num_workers_) workers_[worker].last_seen = absl::Now();
    if (!stopping) {
      if (snapshot_->version >= min_version || snapshot_->header.header().job_done()) {
        ready = snapshot_;
      } else if (pushed_key.has_value() && worker >= 0 && static_cast<uint32_t>(worker) < num_workers_ &&
                 workers_[worker].applied_keys.count(*pushed_key) == 0) {
        lost = absl::FailedPreconditionError(absl::StrFormat(
            "this server holds no contribution with key %d from worker %d (it restarted from a checkpoint "
            "taken before it): push it again",
            *pushed_key, worker));
      } else {
        const uint64_t id = next_waiter_id_++;
        waiters_[id] = Waiter{min_version, absl::Now() + options_.max_pull_wait, std::move(done), worker};
        if (worker >= 0 && static_cast<uint32_t>(worker) < num_workers_) ++workers_[worker].parked_pulls;
        return id;
      }
    }
  }
  if (stopping) {
    done(absl::UnavailableError("server is shutting down"));
  } else if (!lost.ok()) {
    done(lost);
  } else {
    done(ready);
  }
  return 0;
}

bool Trainer::CancelWait(uint64_t id) {
  MutexLock lock(&mu_);
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return false;
  ReleaseWaiter(it->second.worker);
  waiters_.erase(it);
  return true;
}

void Trainer::ExpireWaitersLoop() {
  MutexLock lock(&expiry_mu_);
  while (!expiry_stop_) {
    expiry_mu_.AwaitWithTimeout(Condition(&expiry_stop_), absl::Milliseconds(50));
    std::vector<SnapshotCallback> expired;
    std::vector<std::function<void()>> cancels;
    std::optional<ClosingWindow> closing;
    {
      MutexLock state_lock(&mu_);
      const absl::Time now = absl::Now();
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->second.deadline <= now) {
          ReleaseWaiter(it->second.worker);
          expired.push_back(std::move(it->second.done));
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
      for (auto it = push_streams_.begin(); it != push_streams_.end();) {
        if (it->second.deadline <= now) {
          cancels.push_back(std::move(it->second.cancel));
          it = push_streams_.erase(it);
        } else {
          ++it;
        }
      }
      const v1::WindowRule& rule = spec_.window();
      if (rule.policy() == v1::WindowRule::POLICY_QUORUM &&
          now - window_opened_ >= absl::Milliseconds(static_cast<int64_t>(rule.deadline_ms()))) {
        closing = TakeWindowIfComplete(true);
      }
    }
    for (auto& cancel : cancels) cancel();
    for (auto& done : expired) {
      done(absl::DeadlineExceededError("the requested version was not published within the server's pull bound"));
    }
    if (closing.has_value()) {
      // Closing (and checkpointing) runs on this thread; the expiry lock is
      // not needed for it.
      expiry_mu_.Unlock();
      Close(std::move(*closing));
      expiry_mu_.Lock();
    }
  }
}

std::shared_ptr<const ParamSnapshot> Trainer::Current() const {
  MutexLock lock(&mu_);
  return snapshot_;
}

uint64_t Trainer::version() const {
  MutexLock lock(&mu_);
  return version_;
}

bool Trainer::done() const {
  MutexLock lock(&mu_);
  return version_ >= spec_.total_steps();
}

std::vector<float> Trainer::Parameters() const {
  // Steps hold step_mu_, so the parameters are those of one version.
  MutexLock step_lock(&step_mu_);
  return std::vector<float>(params_.data(), params_.data() + params_.size());
}

absl::Status Trainer::ReportMetric(const v1::ReportMetricRequest& request) {
  GRADACC_RETURN_IF_ERROR(CheckJob(request.job_id()));
  GRADACC_RETURN_IF_ERROR(CheckWorker(request.worker()));
  if (!(request.test_accuracy() >= 0 && request.test_accuracy() <= 1)) {
    return absl::InvalidArgumentError("test_accuracy must be in [0, 1]");
  }
  {
    MutexLock lock(&mu_);
    test_accuracy_ = request.test_accuracy();
    test_accuracy_step_ = request.step();
    v1::AccuracyPoint point;
    point.set_step(request.step());
    point.set_test_accuracy(request.test_accuracy());
    accuracy_history_.push_back(point);
    if (accuracy_history_.size() > kAccuracyKeep) accuracy_history_.pop_front();
  }
  NotifyListeners();
  return absl::OkStatus();
}

v1::Status Trainer::GetStatus() const {
  v1::Status s;
  const absl::Time now = absl::Now();
  MutexLock lock(&mu_);
  s.set_job_id(spec_.job_id());
  bool any_joined = false;
  for (const WorkerInfo& w : workers_) any_joined |= w.state != v1::WORKER_STATE_NEVER_JOINED;
  if (stopping_) {
    s.set_state(v1::JOB_STATE_STOPPING);
  } else if (version_ >= spec_.total_steps()) {
    s.set_state(v1::JOB_STATE_DONE);
  } else {
    s.set_state(any_joined ? v1::JOB_STATE_RUNNING : v1::JOB_STATE_WAITING);
  }
  s.set_step(version_);
  s.set_version(version_);
  s.set_total_steps(spec_.total_steps());
  v1::WindowProgress* wp = s.mutable_window();
  wp->set_window(version_);
  wp->set_contributions_received(received_);
  wp->set_samples_received(samples_received_);
  wp->set_samples_expected(uint64_t{num_workers_} * spec_.window().micro_batches() *
                           spec_.window().micro_batch_size());
  wp->set_opened_unix_micros(absl::ToUnixMicros(window_opened_));
  wp->set_contributions_expected(expected_count_);
  if (version_ < spec_.total_steps()) {
    for (uint32_t i = 0; i < num_workers_; ++i) {
      if (expected_[i] && !slots_[i].has_value()) wp->add_missing_workers(i);
    }
  }
  for (uint32_t i = 0; i < num_workers_; ++i) {
    const WorkerInfo& w = workers_[i];
    v1::WorkerStatus* ws = s.add_workers();
    ws->set_worker(i);
    // A covered worker is as alive as the worker that pushes for it.
    const WorkerInfo& live = w.covered_by >= 0 ? workers_[w.covered_by] : w;
    const bool lost = (w.state == v1::WORKER_STATE_JOINED || w.state == v1::WORKER_STATE_PUSHED) &&
                      live.parked_pulls == 0 && now - live.last_seen > options_.worker_timeout;
    ws->set_state(lost ? v1::WORKER_STATE_LOST : w.state);
    ws->set_member(w.member);
    ws->set_expected_in_window(expected_[i]);
    ws->set_hostname(w.hostname);
    ws->set_last_seen_unix_micros(w.last_seen == absl::InfinitePast() ? 0 : absl::ToUnixMicros(w.last_seen));
    ws->set_contributions(w.contributions);
    ws->set_duplicates(w.duplicates);
    ws->set_rejected(w.rejected);
    ws->set_last_window(w.last_window);
    ws->set_covered_by(w.covered_by);
    if (w.covered_by >= 0) {
      ws->set_transport(v1::TRANSPORT_HIERARCHICAL);
    } else if (w.shared_memory && grad_segments_[i] != nullptr) {
      ws->set_transport(v1::TRANSPORT_SHARED_MEMORY);
    } else if (!w.shm_failure.empty()) {
      ws->set_transport(v1::TRANSPORT_GRPC);
      ws->set_shared_memory_failure(w.shm_failure);
    } else if (params_segment_ == nullptr || w.contributed_ever) {
      ws->set_transport(v1::TRANSPORT_GRPC);
    }
  }
  if (params_segment_ == nullptr) s.set_shared_memory_off_reason(shm_off_reason_);
  s.set_last_loss(last_loss_);
  for (const v1::LossPoint& p : loss_history_) *s.add_loss_history() = p;
  if (recent_steps_.size() >= 2) {
    const double dt = Seconds(recent_steps_.back().first - recent_steps_.front().first);
    uint64_t samples = 0;
    for (size_t i = 1; i < recent_steps_.size(); ++i) samples += recent_steps_[i].second;
    if (dt > 0) {
      s.set_steps_per_second(static_cast<double>(recent_steps_.size() - 1) / dt);
      s.set_samples_per_second(static_cast<double>(samples) / dt);
    }
  }
  s.set_optimizer(spec_.optimizer().kind());
  s.set_learning_rate(LearningRateAt(spec_.optimizer(), spec_.schedule(), version_));
  *s.mutable_last_step() = last_timing_;
  s.set_uptime_seconds(Seconds(now - started_));
  s.set_reduction(spec_.reduction());
  s.set_num_elements(layout_.num_elements());
  s.set_shard(options_.shard);
  s.set_num_shards(options_.num_shards);
  s.set_shard_begin(begin_);
  s.set_shard_end(end_);
  s.set_server_time_unix_micros(absl::ToUnixMicros(now));
  s.set_test_accuracy(test_accuracy_);
  s.set_test_accuracy_step(test_accuracy_step_);
  s.set_contributions_accepted(accepted_);
  s.set_contributions_duplicate(duplicates_);
  s.set_contributions_stale(stale_);
  s.set_contributions_rejected(rejected_);
  s.set_final_params_path(options_.final_params_path);
  s.set_final_params_written(final_written_);
  s.set_policy(spec_.window().policy());
  uint32_t members = 0;
  for (const WorkerInfo& w : workers_) members += w.member && w.state != v1::WORKER_STATE_LEFT;
  s.set_members(members);
  for (uint32_t m : last_missing_) s.add_last_step_missing_workers(m);
  s.set_last_step_samples(last_step_samples_);
  s.set_checkpoint_dir(options_.checkpoint_dir);
  s.set_last_checkpoint_step(last_checkpoint_step_);
  s.set_last_checkpoint_unix_micros(
      last_checkpoint_time_ == absl::InfinitePast() ? 0 : absl::ToUnixMicros(last_checkpoint_time_));
  s.set_restored_from(restored_from_);
  s.set_server_restarts(restarts_);
  for (const v1::AccuracyPoint& p : accuracy_history_) *s.add_accuracy_history() = p;
  return s;
}

uint64_t Trainer::AddListener(Listener listener) {
  MutexLock lock(&mu_);
  const uint64_t id = next_listener_id_++;
  listeners_[id] = std::make_shared<Listener>(std::move(listener));
  return id;
}

void Trainer::RemoveListener(uint64_t id) {
  MutexLock lock(&mu_);
  listeners_.erase(id);
}

void Trainer::NotifyListeners() {
  std::vector<std::shared_ptr<Listener>> listeners;
  {
    MutexLock lock(&mu_);
    for (auto& [id, l] : listeners_) listeners.push_back(l);
  }
  for (auto& l : listeners) (*l)();
}

void Trainer::Shutdown() {
  std::vector<SnapshotCallback> parked;
  {
    MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, w] : waiters_) parked.push_back(std::move(w.done));
    waiters_.clear();
  }
  for (auto& done : parked) done(absl::UnavailableError("server is shutting down"));
  NotifyListeners();
}

}  // namespace gradacc
