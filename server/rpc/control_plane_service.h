// ControlPlaneServiceImpl: gradacc.v1.ControlPlane on gRPC's callback API, a
// thin adapter over Trainer (status, watch, ledger, metric reports) and, for
// sharded jobs, ShardExchange (GetNormPartial, the job-wide status).
//
// Calls go to the shard their metadata names (ShardRouter); job-wide calls
// without it (status, watch, ledger, metric reports) to the first shard
// served. Thread-safe; owns neither the router nor the Trainers and
// exchanges, which must outlive the grpc::Server the service is registered
// with.
#ifndef GRADACC_SERVER_RPC_CONTROL_PLANE_SERVICE_H_
#define GRADACC_SERVER_RPC_CONTROL_PLANE_SERVICE_H_

#include "common/auth.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "server/shard_exchange.h"
#include "server/rpc/shard_router.h"
#include "server/trainer.h"

namespace gradacc {

class ControlPlaneServiceImpl final : public v1::ControlPlane::CallbackService {
 public:
  ControlPlaneServiceImpl(const ShardRouter* router, TokenSet tokens) : router_(router), tokens_(std::move(tokens)) {}

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
  const ShardRouter* const router_;
  const TokenSet tokens_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_CONTROL_PLANE_SERVICE_H_
