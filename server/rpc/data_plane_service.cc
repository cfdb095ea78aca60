#include "server/rpc/data_plane_service.h"

#include "common/errors.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "server/rpc/authorize.h"
#include "server/rpc/pull_reactor.h"
#include "server/rpc/push_reactor.h"

namespace gradacc {

grpc::ServerUnaryReactor* DataPlaneServiceImpl::Join(grpc::CallbackServerContext* context,
                                                     const v1::JoinRequest* request, v1::JoinResponse* response) {
  return Unary(context, tokens_, Role::kWorker, [&]() -> absl::Status {
    GRADACC_ASSIGN_OR_RETURN(const ServedShard* shard, router_->Route(context));
    auto result = shard->trainer->Join(*request);
    if (result.ok()) *response = *std::move(result);
    return result.status();
  });
}

grpc::ServerReadReactor<grpc::ByteBuffer>* DataPlaneServiceImpl::Push(grpc::CallbackServerContext* context,
                                                                     grpc::ByteBuffer* response) {
  if (absl::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    return new RefusedRead<grpc::ByteBuffer>(denied);
  }
  auto shard = router_->Route(context);
  if (!shard.ok()) return new RefusedRead<grpc::ByteBuffer>(shard.status());
  return new PushReactor((*shard)->trainer, context, response);
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* DataPlaneServiceImpl::Pull(grpc::CallbackServerContext* context,
                                                                       const grpc::ByteBuffer* request) {
  if (absl::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    return new RefusedWrite<grpc::ByteBuffer>(denied);
  }
  auto shard = router_->Route(context);
  if (!shard.ok()) return new RefusedWrite<grpc::ByteBuffer>(shard.status());
  v1::PullRequest parsed;
  grpc::ByteBuffer bytes = *request;  // shares the slices
  if (!ParseMessage(bytes, &parsed)) {
    return new RefusedWrite<grpc::ByteBuffer>(
        Refusal(v1::ERROR_REASON_PROTOCOL, "a pull request that is not a gradacc.v1.PullRequest"));
  }
  return new PullReactor((*shard)->trainer, parsed);
}

grpc::ServerUnaryReactor* DataPlaneServiceImpl::AttachSharedMemory(grpc::CallbackServerContext* context,
                                                                  const v1::AttachSharedMemoryRequest* request,
                                                                  v1::AttachSharedMemoryResponse* response) {
  return Unary(context, tokens_, Role::kWorker, [&]() -> absl::Status {
    GRADACC_ASSIGN_OR_RETURN(const ServedShard* shard, router_->Route(context));
    auto result = shard->trainer->AttachSharedMemory(*request);
    if (result.ok()) *response = *std::move(result);
    return result.status();
  });
}

grpc::ServerUnaryReactor* DataPlaneServiceImpl::Leave(grpc::CallbackServerContext* context,
                                                      const v1::LeaveRequest* request, v1::LeaveResponse*) {
  return Unary(context, tokens_, Role::kWorker, [&]() -> absl::Status {
    GRADACC_ASSIGN_OR_RETURN(const ServedShard* shard, router_->Route(context));
    return shard->trainer->Leave(*request);
  });
}

}  // namespace gradacc
