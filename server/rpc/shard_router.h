// ShardRouter: which of the shards this process serves a call is for. One
// gradacc-server may serve several shards of a sharded job on one address
// (--shard=0,4,8,...): a worker's calls to all of them then share one
// connection, so each (worker, server host) pair is one long-lived flow
// instead of one short flow per shard. Every call to a sharded job names
// its shard in the x-gradacc-shard metadata (common/wire.h).
//
// Thread-safe (immutable after construction); owns nothing.
#ifndef GRADACC_SERVER_RPC_SHARD_ROUTER_H_
#define GRADACC_SERVER_RPC_SHARD_ROUTER_H_

#include <grpcpp/server_context.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace gradacc {

class Trainer;
class ShardExchange;

struct ServedShard {
  uint32_t index = 0;
  Trainer* trainer = nullptr;
  ShardExchange* exchange = nullptr;  // null: unsharded
};

class ShardRouter {
 public:
  explicit ShardRouter(std::vector<ServedShard> shards) : shards_(std::move(shards)) {}

  // The shard the call's x-gradacc-shard metadata names. Without it: the
  // only shard served, or, with `job_wide`, the first (calls that any shard
  // answers for the whole job: status, watch, the step ledger). Otherwise
  // WRONG_SHARD, naming the shards served here.
  absl::StatusOr<const ServedShard*> Route(const grpc::CallbackServerContext* context, bool job_wide = false) const;

 private:
  const std::vector<ServedShard> shards_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_SHARD_ROUTER_H_
