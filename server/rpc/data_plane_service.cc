#include "server/rpc/data_plane_service.h"

#include "server/rpc/authorize.h"
#include "server/rpc/pull_reactor.h"
#include "server/rpc/push_reactor.h"

namespace gradacc {

grpc::ServerUnaryReactor* DataPlaneServiceImpl::Join(grpc::CallbackServerContext* context,
                                                     const v1::JoinRequest* request, v1::JoinResponse* response) {
  return Unary(context, tokens_, Role::kWorker, [&]() -> absl::Status {
    auto result = trainer_->Join(*request);
    if (result.ok()) *response = *std::move(result);
    return result.status();
  });
}

grpc::ServerReadReactor<v1::PushRequest>* DataPlaneServiceImpl::Push(grpc::CallbackServerContext* context,
                                                                     v1::PushResponse* response) {
  if (absl::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    return new RefusedRead<v1::PushRequest>(denied);
  }
  return new PushReactor(trainer_, context, response);
}

grpc::ServerWriteReactor<v1::PullResponse>* DataPlaneServiceImpl::Pull(grpc::CallbackServerContext* context,
                                                                       const v1::PullRequest* request) {
  if (absl::Status denied = Authorize(context, tokens_, Role::kWorker); !denied.ok()) {
    return new RefusedWrite<v1::PullResponse>(denied);
  }
  return new PullReactor(trainer_, *request);
}

grpc::ServerUnaryReactor* DataPlaneServiceImpl::AttachSharedMemory(grpc::CallbackServerContext* context,
                                                                  const v1::AttachSharedMemoryRequest* request,
                                                                  v1::AttachSharedMemoryResponse* response) {
  return Unary(context, tokens_, Role::kWorker, [&]() -> absl::Status {
    auto result = trainer_->AttachSharedMemory(*request);
    if (result.ok()) *response = *std::move(result);
    return result.status();
  });
}

grpc::ServerUnaryReactor* DataPlaneServiceImpl::Leave(grpc::CallbackServerContext* context,
                                                      const v1::LeaveRequest* request, v1::LeaveResponse*) {
  return Unary(context, tokens_, Role::kWorker, [&] { return trainer_->Leave(*request); });
}

}  // namespace gradacc
