// ControlPlaneServiceImpl: gradacc.v1.ControlPlane on gRPC's callback API, a
// thin adapter over Trainer (status, watch, ledger, metric reports) and, for
// sharded jobs, ShardExchange (GetNormPartial, the job-wide status).
//
// Thread-safe; owns neither the Trainer nor the exchange, which must outlive
// the grpc::Server the service is registered with.
#ifndef GRADACC_SERVER_RPC_CONTROL_PLANE_SERVICE_H_
#define GRADACC_SERVER_RPC_CONTROL_PLANE_SERVICE_H_

#include "common/auth.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "server/shard_exchange.h"
#include "server/trainer.h"

namespace gradacc {

class ControlPlaneServiceImpl final : public v1::ControlPlane::CallbackService {
 public:
  // `exchange` may be null (unsharded).
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

#endif  // GRADACC_SERVER_RPC_CONTROL_PLANE_SERVICE_H_
