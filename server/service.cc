#include "server/service.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <memory>
#include <thread>
#include <utility>

#include "common/grpc_status.h"
#include "common/mutex.h"
#include "server/push_assembler.h"
#include "server/shard_exchange.h"

namespace gradacc {
namespace {

// Pull: parked with the Trainer until the version exists, then streams the
// shared, pre-serialised snapshot (header, then chunks) — or only the header
// to a worker that reads the parameters from shared memory.
class PullReactor final : public grpc::ServerWriteReactor<v1::PullResponse> {
 public:
  PullReactor(Trainer* trainer, const v1::PullRequest& request)
      : trainer_(trainer),
        shared_memory_(request.shared_memory() && request.worker() < trainer->spec().window().num_workers() &&
                       trainer->SharedMemoryAttached(request.worker())) {
    absl::Status valid = Validate(request);
    if (!valid.ok()) {
      Finish(ToGrpcStatus(valid));
      return;
    }
    // The callback may run before WaitForVersion returns (on this thread) or
    // later on the thread that closes the window.
    const uint64_t id = trainer_->WaitForVersion(
        request.min_version(),
        [this](absl::StatusOr<std::shared_ptr<const ParamSnapshot>> snap) { OnSnapshot(std::move(snap)); },
        request.worker(),
        request.has_contribution_key() ? std::optional<uint64_t>(request.contribution_key()) : std::nullopt);
    MutexLock lock(&mu_);
    if (id != 0 && !resolved_) waiter_id_ = id;
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "pull stream broken"));
      return;
    }
    WriteNext();
  }

  void OnCancel() override {
    uint64_t id;
    {
      MutexLock lock(&mu_);
      id = waiter_id_;
      waiter_id_ = 0;
    }
    // When the waiter was still parked, nobody else will finish the call.
    if (id != 0 && trainer_->CancelWait(id)) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "pull cancelled"));
    }
  }

  void OnDone() override { delete this; }

 private:
  absl::Status Validate(const v1::PullRequest& request) {
    const v1::JobSpec& spec = trainer_->spec();
    if (!request.job_id().empty() && request.job_id() != spec.job_id()) {
      return absl::NotFoundError("unknown job '" + request.job_id() + "'; this server runs job '" +
                                 spec.job_id() + "'");
    }
    if (request.worker() >= spec.window().num_workers()) {
      return absl::InvalidArgumentError("unknown worker " + std::to_string(request.worker()));
    }
    return absl::OkStatus();
  }

  void OnSnapshot(absl::StatusOr<std::shared_ptr<const ParamSnapshot>> snap) {
    {
      MutexLock lock(&mu_);
      resolved_ = true;
      waiter_id_ = 0;
    }
    if (!snap.ok()) {
      Finish(ToGrpcStatus(snap.status()));
      return;
    }
    snapshot_ = std::move(*snap);
    if (shared_memory_) {
      header_ = snapshot_->header;
      header_.mutable_header()->set_shared_memory(true);
      trainer_->CountBytes(0, header_.header().num_elements() * sizeof(float));
      next_chunk_ = snapshot_->chunks.size();
      StartWrite(&header_);
      return;
    }
    if (!snapshot_->has_chunks) {
      // Published without chunks (every member was on shared memory). This
      // may run inside the window's close, which holds the step lock that
      // FullSnapshot needs: build them on a thread of their own.
      std::thread([this] {
        snapshot_ = trainer_->FullSnapshot();
        StartWrite(&snapshot_->header);
      }).detach();
      return;
    }
    StartWrite(&snapshot_->header);
  }

  void WriteNext() {
    if (next_chunk_ < snapshot_->chunks.size()) {
      trainer_->CountBytes(0, snapshot_->chunks[next_chunk_].chunk().data().size());
      StartWrite(&snapshot_->chunks[next_chunk_++]);
    } else {
      Finish(grpc::Status::OK);
    }
  }

  Trainer* const trainer_;
  const bool shared_memory_;
  std::shared_ptr<const ParamSnapshot> snapshot_;
  v1::PullResponse header_;  // the header-only answer
  size_t next_chunk_ = 0;
  Mutex mu_;
  uint64_t waiter_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool resolved_ ABSL_GUARDED_BY(mu_) = false;
};

// Push: the first message must be the header; chunks are validated and
// copied into the push's private buffer as they arrive; the contribution is
// committed only when the client half-closes a complete stream.
class PushReactor final : public grpc::ServerReadReactor<v1::PushRequest> {
 public:
  PushReactor(Trainer* trainer, grpc::CallbackServerContext* context, v1::PushResponse* response)
      : trainer_(trainer), context_(context), response_(response), cancel_(std::make_shared<CancelState>()) {
    cancel_->context = context;
    // A push that outlives the server's push timeout is cancelled, which
    // frees its buffer: an unfinished stream cannot hold memory or a window.
    std::shared_ptr<CancelState> state = cancel_;
    handle_ = trainer_->RegisterPushStream([state] {
      MutexLock lock(&state->mu);
      if (state->context != nullptr) state->context->TryCancel();
    });
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (context_->IsCancelled()) {
        assembler_.Abandon();
        Finish(grpc::Status(grpc::StatusCode::CANCELLED,
                            "push cancelled (by the client, or past the server's push timeout); nothing was counted"));
        return;
      }
      Complete();
      return;
    }
    absl::Status status = assembler_.Add(request_);
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override {
    trainer_->UnregisterPushStream(handle_);
    {
      MutexLock lock(&cancel_->mu);
      cancel_->context = nullptr;
    }
    delete this;
  }

 private:
  struct CancelState {
    Mutex mu;
    grpc::CallbackServerContext* context ABSL_GUARDED_BY(mu) = nullptr;
  };

  void Complete() {
    auto result = assembler_.Finish();
    if (!result.ok()) {
      Finish(ToGrpcStatus(result.status()));
      return;
    }
    response_->set_window(result->window);
    response_->set_closed_window(result->closed_window);
    response_->set_contributions_received(result->received);
    response_->set_contributions_expected(result->expected);
    Finish(grpc::Status::OK);
  }

  Trainer* const trainer_;
  grpc::CallbackServerContext* const context_;
  v1::PushResponse* const response_;
  v1::PushRequest request_;
  PushAssembler assembler_{trainer_};
  std::shared_ptr<CancelState> cancel_;
  uint64_t handle_ = 0;
};

// WatchStatus: writes the newest status whenever the Trainer notifies;
// notifications that arrive while a write is in flight coalesce into one.
class WatchReactor final : public grpc::ServerWriteReactor<v1::Status> {
 public:
  explicit WatchReactor(Trainer* trainer) : trainer_(trainer), state_(std::make_shared<Shared>()) {
    state_->reactor = this;
    std::weak_ptr<Shared> weak = state_;
    listener_id_ = trainer_->AddListener([weak] {
      if (auto s = weak.lock()) s->Notify();
    });
    state_->Notify();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      state_->Stop();
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watch stream broken"));
      return;
    }
    state_->WriteDone();
  }

  void OnCancel() override {
    if (state_->Stop()) Finish(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
  }

  void OnDone() override {
    trainer_->RemoveListener(listener_id_);
    state_->Detach();
    delete this;
  }

 private:
  // Outlives the reactor while a listener call may still be running.
  struct Shared {
    Mutex mu;
    WatchReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool dirty ABSL_GUARDED_BY(mu) = false;
    bool stopped ABSL_GUARDED_BY(mu) = false;
    bool finished ABSL_GUARDED_BY(mu) = false;

    void Notify() {
      MutexLock lock(&mu);
      if (reactor == nullptr || stopped) return;
      if (writing) {
        dirty = true;
        return;
      }
      writing = true;
      reactor->WriteLatest(&mu);
    }
    void WriteDone() {
      MutexLock lock(&mu);
      writing = false;
      if (reactor == nullptr || stopped) return;
      if (dirty) {
        dirty = false;
        writing = true;
        reactor->WriteLatest(&mu);
      }
    }
    // Returns true when the caller should finish the call.
    bool Stop() {
      MutexLock lock(&mu);
      const bool first = !stopped;
      stopped = true;
      return first;
    }
    void Detach() {
      MutexLock lock(&mu);
      reactor = nullptr;
    }
  };

  void WriteLatest(Mutex*) {
    status_ = trainer_->GetStatus();
    if (status_.state() == v1::JOB_STATE_STOPPING) {
      state_->mu.AssertHeld();  // the caller holds it (Shared::Notify, WriteDone)
      state_->stopped = true;
      Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down"));
      return;
    }
    StartWrite(&status_);
  }

  Trainer* const trainer_;
  std::shared_ptr<Shared> state_;
  uint64_t listener_id_ = 0;
  v1::Status status_;
};

// A streaming call refused before it starts.
template <typename Request>
class RefusedRead final : public grpc::ServerReadReactor<Request> {
 public:
  explicit RefusedRead(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

template <typename Response>
class RefusedWrite final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RefusedWrite(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::Status Authorize(const grpc::CallbackServerContext* context, const TokenSet& tokens, Role needed) {
  if (!tokens.enabled()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  const Role role =
      it == metadata.end() ? Role::kNone : RoleOf(tokens, absl::string_view(it->second.data(), it->second.size()));
  if (role == Role::kNone) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        it == metadata.end() ? "missing bearer token (authorization: Bearer <token>)"
                                             : "unknown bearer token");
  }
  if (needed == Role::kWorker && role != Role::kWorker) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "this token may only read status; a worker token is needed");
  }
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* DataPlaneServiceImpl::Join(grpc::CallbackServerContext* context,
                                                     const v1::JoinRequest* request, v1::JoinResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  auto result = trainer_->Join(*request);
  if (result.ok()) *response = std::move(*result);
  reactor->Finish(ToGrpcStatus(result.status()));
  return reactor;
}

grpc::ServerReadReactor<v1::PushRequest>* DataPlaneServiceImpl::Push(grpc::CallbackServerContext* context,
                                                                     v1::PushResponse* response) {
  if (grpc::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    return new RefusedRead<v1::PushRequest>(denied);
  }
  return new PushReactor(trainer_, context, response);
}

grpc::ServerWriteReactor<v1::PullResponse>* DataPlaneServiceImpl::Pull(grpc::CallbackServerContext* context,
                                                                       const v1::PullRequest* request) {
  if (grpc::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    return new RefusedWrite<v1::PullResponse>(denied);
  }
  return new PullReactor(trainer_, *request);
}

grpc::ServerUnaryReactor* DataPlaneServiceImpl::AttachSharedMemory(grpc::CallbackServerContext* context,
                                                                  const v1::AttachSharedMemoryRequest* request,
                                                                  v1::AttachSharedMemoryResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  auto result = trainer_->AttachSharedMemory(*request);
  if (result.ok()) *response = std::move(*result);
  reactor->Finish(ToGrpcStatus(result.status()));
  return reactor;
}

grpc::ServerUnaryReactor* DataPlaneServiceImpl::Leave(grpc::CallbackServerContext* context,
                                                      const v1::LeaveRequest* request, v1::LeaveResponse*) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(trainer_->Leave(*request)));
  return reactor;
}

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::GetStatus(grpc::CallbackServerContext* context,
                                                             const v1::GetStatusRequest*, v1::Status* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = Authorize(context, tokens_, Role::kReader); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  *response = trainer_->GetStatus();
  // Sharded: the job-wide picture from every shard (one level deep; peers
  // asked with x-gradacc-local do not ask further).
  if (exchange_ != nullptr && context->client_metadata().find("x-gradacc-local") == context->client_metadata().end()) {
    for (size_t i = 0; i < exchange_->peers().size(); ++i) {
      v1::ShardSummary* summary = response->add_shards();
      summary->set_shard(i);
      summary->set_address(exchange_->peers()[i]);
      v1::Status peer;
      bool ok = true;
      if (i == exchange_->shard()) {
        peer = *response;
      } else {
        auto channel = grpc::CreateChannel(exchange_->peers()[i], grpc::InsecureChannelCredentials());
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
        ctx.AddMetadata("x-gradacc-local", "1");
        if (!exchange_->token().empty()) ctx.AddMetadata("authorization", "Bearer " + exchange_->token());
        ok = v1::ControlPlane::NewStub(channel)->GetStatus(&ctx, v1::GetStatusRequest(), &peer).ok();
      }
      summary->set_reachable(ok);
      if (!ok) continue;
      summary->set_step(peer.step());
      summary->set_state(peer.state());
      summary->set_contributions_received(peer.window().contributions_received());
      summary->set_contributions_expected(peer.window().contributions_expected());
      summary->set_shard_begin(peer.shard_begin());
      summary->set_shard_end(peer.shard_end());
    }
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<v1::Status>* ControlPlaneServiceImpl::WatchStatus(grpc::CallbackServerContext* context,
                                                                           const v1::WatchStatusRequest*) {
  if (grpc::Status denied = Authorize(context, tokens_, Role::kReader); !denied.ok()) {
    return new RefusedWrite<v1::Status>(denied);
  }
  return new WatchReactor(trainer_);
}

namespace {

// GetNormPartial: parked until this shard has reduced the window.
class NormReactor final : public grpc::ServerUnaryReactor {
 public:
  NormReactor(ShardExchange* exchange, uint64_t window, v1::GetNormPartialResponse* response)
      : exchange_(exchange), response_(response), state_(std::make_shared<State>()) {
    std::shared_ptr<State> state = state_;
    const uint32_t shard = exchange->shard();
    const uint64_t id = exchange_->WhenPublished(window, [this, state, shard](const std::vector<double>& value) {
      MutexLock lock(&state->mu);
      if (state->finished) return;
      state->finished = true;
      response_->set_shard(shard);
      for (double v : value) response_->add_tensor_sums(v);
      Finish(grpc::Status::OK);
    });
    MutexLock lock(&state_->mu);
    id_ = id;
  }
  void OnCancel() override {
    uint64_t id;
    {
      MutexLock lock(&state_->mu);
      if (state_->finished) return;
      state_->finished = true;
      id = id_;
    }
    exchange_->Cancel(id);
    Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }
  void OnDone() override { delete this; }

 private:
  struct State {
    Mutex mu;
    bool finished ABSL_GUARDED_BY(mu) = false;
  };
  ShardExchange* const exchange_;
  v1::GetNormPartialResponse* const response_;
  std::shared_ptr<State> state_;
  uint64_t id_ = 0;
};

}  // namespace

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::GetNormPartial(grpc::CallbackServerContext* context,
                                                                  const v1::GetNormPartialRequest* request,
                                                                  v1::GetNormPartialResponse* response) {
  if (grpc::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok() || exchange_ == nullptr) {
    auto* reactor = context->DefaultReactor();
    reactor->Finish(denied.ok() ? grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "this server is not sharded")
                                : denied);
    return reactor;
  }
  return new NormReactor(exchange_, request->window(), response);
}

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::GetSteps(grpc::CallbackServerContext* context,
                                                            const v1::GetStepsRequest* request,
                                                            v1::GetStepsResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = Authorize(context, tokens_, Role::kReader); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  *response = trainer_->GetSteps(request->from_step(), request->to_step());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::ReportMetric(grpc::CallbackServerContext* context,
                                                                const v1::ReportMetricRequest* request,
                                                                v1::ReportMetricResponse*) {
  auto* reactor = context->DefaultReactor();
  if (grpc::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(trainer_->ReportMetric(*request)));
  return reactor;
}

}  // namespace gradacc
