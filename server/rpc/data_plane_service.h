// DataPlaneServiceImpl: gradacc.v1.DataPlane on gRPC's callback API, a thin
// adapter over Trainer (authorisation, then the Trainer decides; refusals
// carry their reasons). Push and Pull are reactors of their own
// (push_reactor.h, pull_reactor.h).
//
// Each call goes to the shard its metadata names (ShardRouter: one process
// may serve several shards of a job). Thread-safe; owns neither the router
// nor the Trainers, which must outlive the grpc::Server the service is
// registered with.
#ifndef GRADACC_SERVER_RPC_DATA_PLANE_SERVICE_H_
#define GRADACC_SERVER_RPC_DATA_PLANE_SERVICE_H_

#include "common/auth.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "server/rpc/shard_router.h"
#include "server/trainer.h"

namespace gradacc {

// Push and Pull are raw (ByteBuffer) methods: their chunks are placed and
// written without protobuf copies (common/wire.h); the wire is the same.
using DataPlaneBase = v1::DataPlane::WithCallbackMethod_Join<v1::DataPlane::WithRawCallbackMethod_Push<
    v1::DataPlane::WithRawCallbackMethod_Pull<v1::DataPlane::WithCallbackMethod_Leave<
        v1::DataPlane::WithCallbackMethod_AttachSharedMemory<v1::DataPlane::Service>>>>>;

class DataPlaneServiceImpl final : public DataPlaneBase {
 public:
  DataPlaneServiceImpl(const ShardRouter* router, TokenSet tokens) : router_(router), tokens_(std::move(tokens)) {}

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* context, const v1::JoinRequest* request,
                                 v1::JoinResponse* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* Push(grpc::CallbackServerContext* context,
                                                 grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Pull(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* context, const v1::LeaveRequest* request,
                                  v1::LeaveResponse* response) override;
  grpc::ServerUnaryReactor* AttachSharedMemory(grpc::CallbackServerContext* context,
                                               const v1::AttachSharedMemoryRequest* request,
                                               v1::AttachSharedMemoryResponse* response) override;

 private:
  const ShardRouter* const router_;
  const TokenSet tokens_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_DATA_PLANE_SERVICE_H_
