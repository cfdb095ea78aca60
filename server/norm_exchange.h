// NormExchange: how sharded servers agree on a window's global gradient
// norm, bit for bit what one server (and torch) computes. A tensor split
// over shards is reduced in index order: the shard holding its start passes
// the reduction state on (CarryIn of the next shard); every shard publishes
// its NormPart and receives each tensor's finished sum of squares.
// Implemented over gRPC in the server layer (server/shard_exchange.h).
#ifndef GRADACC_SERVER_NORM_EXCHANGE_H_
#define GRADACC_SERVER_NORM_EXCHANGE_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/torch_norm.h"
#include "gradacc/v1/control.pb.h"
#include "server/reducer.h"

namespace gradacc {

class NormExchange {
 public:
  virtual ~NormExchange() = default;
  // The state of the tensor the previous shard passed on for `window`,
  // once it published it. CANCELLED when the server is shutting down.
  virtual absl::StatusOr<TorchNormState> CarryIn(uint64_t window) = 0;
  // Publishes this shard's part of `window` and returns, per model tensor,
  // its finished sum of squares over all shards (the same bits on every
  // shard), and whether any shard found a non-finite element. CANCELLED
  // when shutting down: the step is then abandoned, not taken on a partial
  // norm.
  virtual absl::StatusOr<NormTotals> Exchange(uint64_t window, const NormPart& local) = 0;
  // This shard's part of `window` as it published it, while it still holds
  // it (the checkpoint of version window + 1 stores it).
  virtual std::optional<v1::GetNormPartialResponse> Published(uint64_t window) const { return std::nullopt; }
  // A resumed shard: its part of `window` from its checkpoint, served to
  // peers that have not stepped that window yet as if just published.
  virtual void Restore(uint64_t window, const v1::GetNormPartialResponse& part) {}
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_NORM_EXCHANGE_H_
