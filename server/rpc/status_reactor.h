// StatusReactor: GetStatus. This server's status; for a sharded job also the
// job-wide picture, asked of every peer shard with asynchronous calls over
// the exchange's channels (bounded by a short deadline each) — the handler
// never blocks a gRPC thread waiting for them.
//
// Owns itself (deleted in OnDone); the Trainer and the exchange must
// outlive it.
#ifndef GRADACC_SERVER_RPC_STATUS_REACTOR_H_
#define GRADACC_SERVER_RPC_STATUS_REACTOR_H_

#include <grpcpp/client_context.h>
#include <grpcpp/support/server_callback.h>

#include <memory>
#include <vector>

#include "common/tsan.h"
#include "common/mutex.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "server/shard_exchange.h"
#include "server/trainer.h"

namespace gradacc {

class StatusReactor final : public grpc::ServerUnaryReactor {
 public:
  // `exchange` may be null (unsharded), and is ignored when `local_only`
  // (a peer asking for this shard's own status).
  StatusReactor(Trainer* trainer, ShardExchange* exchange, bool local_only, v1::Status* response);
  void OnDone() override {
    TsanAcquire(this);
    TsanRelease(&kTsanServerRpcsDone);
    delete this;
  }

 private:
  struct Peer {
    std::unique_ptr<v1::ControlPlane::Stub> stub;
    grpc::ClientContext context;
    v1::Status status;
    bool ok = false;
    std::string error;
  };
  void PeerDone(size_t i, bool ok);
  void Summarise();

  Trainer* const trainer_;
  ShardExchange* const exchange_;
  v1::Status* const response_;
  const v1::GetStatusRequest request_;
  std::vector<std::unique_ptr<Peer>> peers_;
  Mutex mu_;
  size_t pending_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_STATUS_REACTOR_H_
