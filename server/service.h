// gRPC adapters over Trainer: the data plane (Join/Push/Pull/Leave) and the
// control plane (GetStatus/WatchStatus/ReportMetric), on gRPC's callback API.
// A pull that waits for a window to close is parked as a reactor registered
// with the Trainer, never a blocked thread.
//
// Thread-safe; neither service owns the Trainer, which must outlive the
// grpc::Server they are registered with.
#ifndef GRADACC_SERVER_SERVICE_H_
#define GRADACC_SERVER_SERVICE_H_

#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "common/auth.h"
#include "server/trainer.h"

namespace gradacc {

// The role a call's bearer token grants (OK when tokens are off); else
// UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (too weak).
grpc::Status Authorize(const grpc::CallbackServerContext* context, const TokenSet& tokens, Role needed);

class DataPlaneServiceImpl final : public v1::DataPlane::CallbackService {
 public:
  DataPlaneServiceImpl(Trainer* trainer, TokenSet tokens) : trainer_(trainer), tokens_(std::move(tokens)) {}

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context, const v1::JoinRequest* request,
                                 v1::JoinResponse* response) override;
  grpc::ServerReadReactor<v1::PushRequest>* Push(grpc::CallbackServerContext* context,
                                                 v1::PushResponse* response) override;
  grpc::ServerWriteReactor<v1::PullResponse>* Pull(grpc::CallbackServerContext* context,
                                                   const v1::PullRequest* request) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context, const v1::LeaveRequest* request,
                                  v1::LeaveResponse* response) override;
  grpc::ServerUnaryReactor* AttachSharedMemory(grpc::CallbackServerContext* context,
                                               const v1::AttachSharedMemoryRequest* request,
                                               v1::AttachSharedMemoryResponse* response) override;

 private:
  Trainer* const trainer_;
  const TokenSet tokens_;
};

class ShardExchange;

class ControlPlaneServiceImpl final : public v1::ControlPlane::CallbackService {
 public:
  // `exchange` (may be null) serves GetNormPartial and the job-wide status of
  // a sharded job.
  ControlPlaneServiceImpl(Trainer* trainer, TokenSet tokens, ShardExchange* exchange = nullptr)
      : trainer_(trainer), tokens_(std::move(tokens)), exchange_(exchange) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context, const v1::GetStatusRequest* request,
                                      v1::Status* response) override;
  grpc::ServerWriteReactor<v1::Status>* WatchStatus(grpc::CallbackServerContext* context,
                                                    const v1::WatchStatusRequest* request) override;
  grpc::ServerUnaryReactor* ReportMetric(grpc::CallbackServerContext* context,
                                         const v1::ReportMetricRequest* request,
                                         v1::ReportMetricResponse* response) override;
  grpc::ServerUnaryReactor* GetSteps(grpc::CallbackServerContext* context, const v1::GetStepsRequest* request,
                                     v1::GetStepsResponse* response) override;
  grpc::ServerUnaryReactor* GetNormPartial(grpc::CallbackServerContext* context,
                                           const v1::GetNormPartialRequest* request,
                                           v1::GetNormPartialResponse* response) override;

 private:
  Trainer* const trainer_;
  const TokenSet tokens_;
  ShardExchange* const exchange_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_SERVICE_H_
