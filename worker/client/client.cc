// Client: connecting, joining, Step's recovery and leaving. The transfers
// (push and pull) are in client_transfer.cc, shared memory in client_shm.cc.
#include "worker/client/client.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_split.h"
#include "common/data_plan.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "worker/client/stubs.h"

namespace gradacc {
namespace {

// Phases one round of Step may run before it must fail or finish: rejoin,
// push, pull.
constexpr int kMaxPhasesPerRound = 3;

std::string LocalHostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "";
  return buf;
}

}  // namespace

absl::StatusOr<v1::WireFormat> ParseWireFormat(absl::string_view name) {
  if (name == "f32") return v1::WIRE_FORMAT_F32;
  if (name == "bf16") return v1::WIRE_FORMAT_BF16;
  if (name == "f16") return v1::WIRE_FORMAT_F16;
  return absl::InvalidArgumentError(absl::StrCat("unknown wire format '", name, "'; known: f32, bf16, f16"));
}

Client::Client(const ClientOptions& options) : options_(options) {}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  if (options.server.empty()) return absl::InvalidArgumentError("no server address given");
  std::unique_ptr<Client> client(new Client(options));
  const absl::Time give_up = absl::Now() + options.connect_timeout;
  GRADACC_RETURN_IF_ERROR(client->OpenChannels(give_up));
  // Join and fetch the current parameters, through dropped connections and
  // a restarting server, until the connect timeout.
  RetryPolicy policy = options.retry;
  policy.max_attempts = options.max_join_attempts;
  GRADACC_RETURN_IF_ERROR(Retry(policy, give_up, [&](int) { return client->JoinAndFetch(give_up); }));
  return client;
}

absl::Status Client::OpenChannels(absl::Time give_up) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Reconnect quickly after a server restart or a dropped connection (gRPC's
  // default backoff grows to two minutes).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  for (const auto& [name, value] : BulkTransferChannelArgs()) args.SetInt(name, value);
  // A sharded job lists every shard's address, in shard order. Shards that
  // one process serves share an address, and then one channel (one
  // connection; each call names its shard).
  absl::flat_hash_set<std::string> hosts;
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> channels;
  for (absl::string_view address : absl::StrSplit(options_.server, ',', absl::SkipWhitespace())) {
    hosts.insert(std::string(address.substr(0, address.rfind(':'))));
    std::shared_ptr<grpc::Channel>& channel = channels[address];
    if (channel == nullptr) {
      ConnectionOptions connection = options_.connection;
      connection.server = std::string(address);
      GRADACC_ASSIGN_OR_RETURN(channel, MakeChannel(connection, args));
    }
    server_hosts_ = hosts.size();
    Shard shard;
    shard.address = std::string(address);
    shard.stubs = std::make_unique<GradaccStubs>(channel);
    if (!shard.stubs->channel->WaitForConnected(absl::ToChronoTime(give_up))) {
      return absl::UnavailableError(absl::StrFormat("cannot reach gradacc server at %s within %s", address,
                                                    absl::FormatDuration(options_.connect_timeout)));
    }
    shards_.push_back(std::move(shard));
  }
  if (shards_.empty()) return absl::InvalidArgumentError("no server address given");
  return absl::OkStatus();
}

v1::JoinRequest Client::JoinRequestFor(const std::string& job_id) const {
  v1::JoinRequest request;
  request.set_job_id(job_id);
  request.set_worker(options_.worker);
  request.set_hostname(options_.hostname.empty() ? LocalHostname() : options_.hostname);
  for (uint32_t c : options_.covers) request.add_covers(c);
  // A restarted server that has less than this worker says so.
  request.set_held_version(version_);
  return request;
}

absl::Status Client::JoinShard(size_t i, const std::string& job_id, absl::Time deadline, v1::JoinResponse* response) {
  grpc::ClientContext ctx;
  PrepareShardCall(ctx, shards_[i], deadline, /*wait_for_ready=*/true);
  return FromGrpcStatus(shards_[i].stubs->data->Join(&ctx, JoinRequestFor(job_id), response),
                        "join " + NameOf(shards_[i]));
}

absl::Status Client::AdoptShard(size_t i, const v1::JoinResponse& response) {
  if (params_.size() == 0 && i == 0) {
    job_ = response.job();
    GRADACC_ASSIGN_OR_RETURN(layout_, ModelLayout::FromSpec(job_.model()));
    if (layout_.num_elements() != response.num_elements()) {
      return absl::FailedPreconditionError("the server's job and its element count disagree");
    }
  }
  const uint32_t num_shards = std::max(1u, response.num_shards());
  if (num_shards != shards_.size() || response.shard() != i) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is shard %d of %d, but it was given as shard %d of %d: list every shard's address, in shard order",
        shards_[i].address, response.shard(), num_shards, i, shards_.size()));
  }
  shards_[i].begin = num_shards > 1 ? response.shard_begin() : 0;
  shards_[i].end = num_shards > 1 ? response.shard_end() : layout_.num_elements();
  if (shards_[i].begin != (i == 0 ? 0 : shards_[i - 1].end)) {
    return absl::FailedPreconditionError("the shards' element ranges do not tile the model");
  }
  return absl::OkStatus();
}

absl::Status Client::JoinAndFetch(absl::Time give_up) {
  uint64_t version = 0, newest = 0, wait = 0;  // wait: windows until this worker's first (elastic)
  for (size_t i = 0; i < shards_.size(); ++i) {
    v1::JoinResponse response;
    GRADACC_RETURN_IF_ERROR(
        JoinShard(i, options_.job_id, std::max(give_up, absl::Now() + options_.rpc_timeout), &response));
    GRADACC_RETURN_IF_ERROR(AdoptShard(i, response));
    if (i == 0 && response.has_plan()) plan_ = response.plan();
    wait = std::max<uint64_t>(wait, response.window() - std::min(response.window(), response.version()));
    version = i == 0 ? response.version() : std::min<uint64_t>(version, response.version());
    newest = std::max<uint64_t>(newest, response.version());
  }
  if (shards_.back().end != layout_.num_elements()) {
    return absl::FailedPreconditionError("the shards' element ranges do not cover the model");
  }
  if (params_.size() == 0) {
    params_ = FloatBuffer(layout_.num_elements());
    staging_ = FloatBuffer(layout_.num_elements());
    grad_ = FloatBuffer(layout_.num_elements());
    version_ = 0;
  }
  SetUpSharedMemory();
  // Fetch the current parameters (whatever version the server is at); an
  // elastic job may make the next window this worker's first. Shards one
  // version apart wait for contributions to the older window, maybe this
  // worker's (it was restarted between pushing to one shard and another):
  // take the older version everywhere and compute that window again.
  if (newest > version) {
    GRADACC_RETURN_IF_ERROR(PullExact(version, options_.rpc_timeout));
  } else {
    GRADACC_RETURN_IF_ERROR(Pull(version, options_.rpc_timeout));
  }
  if (wait > 0 && options_.wait_for_first_window) {
    GRADACC_RETURN_IF_ERROR(Pull(version_ + wait, options_.window_timeout));
  }
  return absl::OkStatus();
}

absl::Span<const float> Client::param(int tensor) const {
  const auto& t = layout_.tensors()[tensor];
  return absl::MakeConstSpan(params_.data() + t.offset, t.size);
}

absl::Span<float> Client::grad(int tensor) {
  const auto& t = layout_.tensors()[tensor];
  return absl::MakeSpan(grad_.data() + t.offset, t.size);
}

void Client::AddMicroBatch(uint64_t samples, double loss_sum) {
  if (micro_batches_ == 0) computed_plan_id_ = plan_.id();
  samples_ += samples;
  loss_sum_ += loss_sum;
  ++micro_batches_;
}

void Client::AddCoveredContribution(uint64_t samples, uint32_t micro_batches, double loss_sum) {
  samples_ += samples;
  loss_sum_ += loss_sum;
  micro_batches_ += micro_batches;
}

void Client::ZeroGradients() {
  push_attempts_for_key_ = 0;
  Discard();
}

void Client::Discard() {
  std::fill(grad_.data(), grad_.data() + grad_.size(), 0.0f);
  samples_ = 0;
  micro_batches_ = 0;
  loss_sum_ = 0;
  untouched_.clear();
}

absl::Status Client::SetUntouched(std::vector<uint32_t> tensors) {
  std::sort(tensors.begin(), tensors.end());
  tensors.erase(std::unique(tensors.begin(), tensors.end()), tensors.end());
  if (!tensors.empty() && tensors.back() >= layout_.tensors().size()) {
    return absl::InvalidArgumentError(absl::StrFormat("untouched tensor %d: the job has %d tensors", tensors.back(),
                                                      layout_.tensors().size()));
  }
  untouched_ = std::move(tensors);
  return absl::OkStatus();
}

absl::StatusOr<v1::JoinResponse> Client::Rejoin(absl::Time deadline) {
  RetryPolicy policy = options_.retry;
  policy.max_attempts = options_.max_join_attempts;
  v1::JoinResponse oldest;
  for (size_t i = 0; i < shards_.size(); ++i) {
    v1::JoinResponse response;
    GRADACC_RETURN_IF_ERROR(Retry(policy, deadline, [&](int) {
      response.Clear();
      return JoinShard(i, job_.job_id(), std::min(deadline, absl::Now() + options_.rpc_timeout), &response);
    }));
    if (i == 0 || response.version() < oldest.version()) oldest = std::move(response);
  }
  // A restarted server has new segments (or none): attach again.
  SetUpSharedMemory();
  if (oldest.has_plan()) plan_ = oldest.plan();
  return oldest;
}

bool Client::member() const { return !HasDataPlan(job_) || PlanPosition(plan_, options_.worker) >= 0; }

absl::StatusOr<StepResult> Client::WaitNextWindow() {
  StepResult result;
  result.window = version_;
  result.stale = true;  // nothing of this worker's is in the window
  // A window without members (a restarted server: membership starts over)
  // waits for a join to take it; a worker that reached the new server
  // through a pull alone has not joined it yet.
  const bool unclaimed = HasDataPlan(job_) && plan_.window() == version_ && plan_.members_size() == 0;
  return RunStep(unclaimed ? StepPhase::kRejoin : StepPhase::kPull, result);
}

absl::StatusOr<StepResult> Client::Step() {
  StepResult result;
  result.window = version_;
  return RunStep(StepPhase::kPush, result);
}

absl::StatusOr<StepResult> Client::RunStep(StepPhase phase, StepResult result) {
  const absl::Time deadline = absl::Now() + options_.window_timeout;
  RetryPolicy policy = options_.retry;
  policy.max_attempts = options_.max_recoveries + 1;
  RetryLoop rounds(policy, deadline);
  absl::Status last;
  // A round runs phases while they make progress (push, then pull); a
  // recoverable failure ends it, and the next round starts after a backoff.
  while (rounds.Next()) {
    for (int hop = 0; hop < kMaxPhasesPerRound; ++hop) {
      last = absl::OkStatus();
      absl::StatusOr<StepPhase> next = phase == StepPhase::kPush   ? StepPush(result, deadline, last)
                                       : phase == StepPhase::kPull ? StepPull(result, deadline, last)
                                                                   : StepRejoin(result, deadline);
      if (!next.ok()) return next.status();
      phase = *next;
      if (phase == StepPhase::kDone) return result;
      if (!last.ok()) break;
    }
  }
  if (last.ok()) last = absl::DeadlineExceededError("no progress");
  const std::string away = UnreachableShards();
  return Annotate(last, absl::StrFormat("window %d did not close (%d attempts within %s)%s", result.window,
                                        rounds.attempts(), absl::FormatDuration(options_.window_timeout),
                                        away.empty() ? "" : ": " + away));
}

absl::StatusOr<Client::StepPhase> Client::StepPush(StepResult& result, absl::Time deadline, absl::Status& last) {
  // A sharded job on gRPC pulls each shard as soon as it is pushed.
  const bool pull_ahead = shards_.size() > 1 && grad_segment_ == nullptr && params_segment_ == nullptr;
  absl::StatusOr<v1::PushResponse> pushed = PushImpl(&result.duplicate, &result.push_attempts, pull_ahead, deadline);
  if (pushed.ok()) return StepPhase::kPull;
  const absl::Status& status = pushed.status();
  switch (ActionOf(status)) {
    case v1::CLIENT_ACTION_PULL:
      // The window moves on without this contribution. When it is closed,
      // pull the next version; when another window is open, the server's
      // state differs from what this worker saw: join to learn it.
      result.stale = true;
      if (ReasonOf(status) == v1::ERROR_REASON_STALE_WINDOW) return StepPhase::kPull;
      last = status;
      return StepPhase::kRejoin;
    case v1::CLIENT_ACTION_PUSH_AGAIN:
      last = status;
      return StepPhase::kPush;
    case v1::CLIENT_ACTION_REJOIN:
    case v1::CLIENT_ACTION_RETRY:
    case v1::CLIENT_ACTION_RECOMPUTE:
      // RETRY: Push used up its attempts; the server may be gone or
      // restarted, and joining again tells where it stands. RECOMPUTE: the
      // join brings the window's new plan.
      last = status;
      return StepPhase::kRejoin;
    default:  // FIX_REQUEST, STOP
      return status;
  }
}

absl::StatusOr<Client::StepPhase> Client::StepPull(StepResult& result, absl::Time deadline, absl::Status& last) {
  v1::ParametersHeader header;
  // Our contribution's key goes along: a server that restarted between
  // acknowledging it and this pull says so instead of waiting.
  const std::optional<uint64_t> key = result.stale ? std::nullopt : std::optional<uint64_t>(result.window);
  absl::Status pulled;
  if (ahead_.has_value() && ahead_->version() == result.window + 1) {
    header = *ahead_;  // pulled while pushing (PushImpl)
    InstallPulled(header);
  } else {
    pulled = Pull(result.window + 1, deadline - absl::Now(), &header, key);
  }
  ahead_.reset();
  if (pulled.ok() && version_ > result.window) {
    result.version = version_;
    result.loss = header.loss();
    result.lr = header.lr();
    result.job_done = header.job_done();
    result.skipped = header.skipped();
    result.loss_scale = header.loss_scale();
    return StepPhase::kDone;
  }
  if (pulled.ok()) {
    last = absl::UnavailableError(
        absl::StrFormat("the server answered version %d to a pull of version %d", header.version(), result.window + 1));
    return StepPhase::kRejoin;
  }
  last = pulled;
  switch (ActionOf(pulled)) {
    case v1::CLIENT_ACTION_PUSH_AGAIN:
      return StepPhase::kPush;
    case v1::CLIENT_ACTION_PULL:
      return StepPhase::kPull;
    case v1::CLIENT_ACTION_REJOIN:
    case v1::CLIENT_ACTION_RETRY:
      return StepPhase::kRejoin;
    default:  // FIX_REQUEST, STOP
      return pulled;
  }
}

absl::StatusOr<Client::StepPhase> Client::StepRejoin(StepResult& result, absl::Time deadline) {
  ++result.reconnects;
  GRADACC_ASSIGN_OR_RETURN(v1::JoinResponse joined, Rejoin(deadline));
  if (joined.version() < result.window) {
    return Refusal(v1::ERROR_REASON_SERVER_BEHIND,
                   absl::StrFormat("the server is at version %d but this worker already holds version %d: the server "
                                   "lost parameters it had published (it restarted from an older checkpoint, or "
                                   "without one); its log and `gradacc status` say more",
                                   joined.version(), result.window),
                   {{"server_version", absl::StrCat(joined.version())}, {"held_version", absl::StrCat(version_)}});
  }
  if (HasDataPlan(job_) && joined.version() == result.window) return AfterPlannedRejoin(result, joined);
  // version == window: the server does not have our contribution (any
  // more): push it again, same key. version > window: it closed the
  // window; pull.
  return joined.version() == result.window && !result.stale ? StepPhase::kPush : StepPhase::kPull;
}

Client::StepPhase Client::AfterPlannedRejoin(StepResult& result, const v1::JoinResponse& joined) {
  if (PlanPosition(joined.plan(), options_.worker) < 0) {
    // Not a member of the open window (any more): its gradients are of no
    // use there; wait for the next window.
    result.stale = true;
    return StepPhase::kPull;
  }
  // Gradients computed on this very plan are pushed again, same key.
  if (!result.stale && micro_batches_ > 0 && computed_plan_id_ == joined.plan().id()) return StepPhase::kPush;
  ZeroGradients();
  result.replanned = true;
  result.stale = false;
  result.version = version_;
  return StepPhase::kDone;
}

absl::Status Client::ReportTestAccuracy(double accuracy, uint64_t step) {
  v1::ReportMetricRequest request;
  request.set_job_id(job_.job_id());
  request.set_worker(options_.worker);
  request.set_step(step);
  request.set_test_accuracy(accuracy);
  v1::ReportMetricResponse response;
  grpc::ClientContext ctx;
  PrepareShardCall(ctx, shards_[0], absl::Now() + options_.rpc_timeout, /*wait_for_ready=*/false);
  return FromGrpcStatus(shards_[0].stubs->control->ReportMetric(&ctx, request, &response), "report metric");
}

absl::StatusOr<v1::Status> Client::GetStatus() {
  v1::Status status;
  grpc::ClientContext ctx;
  PrepareShardCall(ctx, shards_[0], absl::Now() + options_.rpc_timeout, /*wait_for_ready=*/false);
  GRADACC_RETURN_IF_ERROR(
      FromGrpcStatus(shards_[0].stubs->control->GetStatus(&ctx, v1::GetStatusRequest(), &status), "status"));
  return status;
}

absl::Status Client::Leave() {
  const absl::Time deadline = absl::Now() + options_.rpc_timeout;
  absl::Status result;
  for (Shard& shard : shards_) {
    v1::LeaveRequest request;
    request.set_job_id(job_.job_id());
    request.set_worker(options_.worker);
    absl::Status left = Retry(options_.retry, deadline, [&](int) {
      v1::LeaveResponse response;
      grpc::ClientContext ctx;
      PrepareShardCall(ctx, shard, deadline, /*wait_for_ready=*/true);
      return FromGrpcStatus(shard.stubs->data->Leave(&ctx, request, &response), "leave " + NameOf(shard));
    });
    if (result.ok()) result = left;
  }
  return result;
}

}  // namespace gradacc
