// NormReactor: GetNormPartial between shards, parked until this shard has
// published its part of the window (ShardExchange), then answered.
//
// Owns itself (deleted in OnDone); the ShardExchange must outlive it.
#ifndef GRADACC_SERVER_RPC_NORM_REACTOR_H_
#define GRADACC_SERVER_RPC_NORM_REACTOR_H_

#include <grpcpp/support/server_callback.h>

#include <memory>

#include "common/tsan.h"
#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "server/shard_exchange.h"

namespace gradacc {

class NormReactor final : public grpc::ServerUnaryReactor {
 public:
  NormReactor(ShardExchange* exchange, uint64_t window, v1::GetNormPartialResponse* response);
  void OnCancel() override;
  void OnDone() override {
    TsanAcquire(this);
    TsanRelease(&kTsanServerRpcsDone);
    delete this;
  }

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

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_NORM_REACTOR_H_
