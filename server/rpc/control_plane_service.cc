#include "server/rpc/control_plane_service.h"

#include "common/errors.h"
#include "common/status_macros.h"
#include "server/rpc/authorize.h"
#include "server/rpc/norm_reactor.h"
#include "server/rpc/status_reactor.h"
#include "server/rpc/watch_reactor.h"

namespace gradacc {

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::GetStatus(grpc::CallbackServerContext* context,
                                                             const v1::GetStatusRequest*, v1::Status* response) {
  // Peer shards ask for this shard's own status (x-gradacc-local) with the
  // shard token.
  const bool local = context->client_metadata().count("x-gradacc-local") > 0;
  const absl::Status denied = local ? AuthorizeAny(context, tokens_, {Role::kReader, Role::kWorker, Role::kShard})
                                    : Authorize(context, tokens_, Role::kReader);
  if (!denied.ok()) return Finished(context, denied);
  auto shard = router_->Route(context, /*job_wide=*/true);
  if (!shard.ok()) return Finished(context, shard.status());
  return new StatusReactor((*shard)->trainer, (*shard)->exchange, local, response);
}

grpc::ServerWriteReactor<v1::Status>* ControlPlaneServiceImpl::WatchStatus(grpc::CallbackServerContext* context,
                                                                           const v1::WatchStatusRequest*) {
  if (absl::Status denied = Authorize(context, tokens_, Role::kReader); !denied.ok()) {
    return new RefusedWrite<v1::Status>(denied);
  }
  auto shard = router_->Route(context, /*job_wide=*/true);
  if (!shard.ok()) return new RefusedWrite<v1::Status>(shard.status());
  return new WatchReactor((*shard)->trainer);
}

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::GetNormPartial(grpc::CallbackServerContext* context,
                                                                  const v1::GetNormPartialRequest* request,
                                                                  v1::GetNormPartialResponse* response) {
  absl::Status denied = Authorize(context, tokens_, Role::kShard);
  absl::StatusOr<const ServedShard*> shard = nullptr;
  if (denied.ok()) {
    shard = router_->Route(context);
    denied = shard.status();
  }
  if (denied.ok() && (*shard)->exchange == nullptr) {
    denied = Refusal(v1::ERROR_REASON_UNSUPPORTED, "this server is not sharded");
  }
  if (!denied.ok()) return Finished(context, denied);
  return new NormReactor((*shard)->exchange, request->window(), response);
}

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::GetSteps(grpc::CallbackServerContext* context,
                                                            const v1::GetStepsRequest* request,
                                                            v1::GetStepsResponse* response) {
  return Unary(context, tokens_, Role::kReader, [&]() -> absl::Status {
    GRADACC_ASSIGN_OR_RETURN(const ServedShard* shard, router_->Route(context, /*job_wide=*/true));
    *response = shard->trainer->GetSteps(request->from_step(), request->to_step());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* ControlPlaneServiceImpl::ReportMetric(grpc::CallbackServerContext* context,
                                                                const v1::ReportMetricRequest* request,
                                                                v1::ReportMetricResponse*) {
  return Unary(context, tokens_, Role::kWorker, [&]() -> absl::Status {
    GRADACC_ASSIGN_OR_RETURN(const ServedShard* shard, router_->Route(context, /*job_wide=*/true));
    return shard->trainer->ReportMetric(*request);
  });
}

}  // namespace gradacc
