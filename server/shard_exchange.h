// ShardExchange: how sharded servers agree on the global gradient norm. Each
// shard publishes its sum of squares for a window; peers ask for it with
// GetNormPartial (answered as soon as it is published: a parked call, not a
// blocked thread); the global sum adds every shard's part in shard order.
// Thread-safe.
#ifndef GRADACC_SERVER_SHARD_EXCHANGE_H_
#define GRADACC_SERVER_SHARD_EXCHANGE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/mutex.h"
#include "server/trainer.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace gradacc {

class ShardExchange final : public NormExchange {
 public:
  // `peers[i]` is shard i's address (this shard's own entry is not dialled).
  ShardExchange(uint32_t shard, std::vector<std::string> peers, std::string job_id, std::string token,
                absl::Duration timeout);
  ~ShardExchange() override;

  absl::StatusOr<std::vector<double>> GlobalSums(uint64_t window, const std::vector<double>& local) override;

  // Calls `done` with this shard's partial of `window` once it is published
  // (at once when it already is). Returns an id for Cancel, 0 if done ran.
  uint64_t WhenPublished(uint64_t window, std::function<void(const std::vector<double>&)> done);
  void Cancel(uint64_t id);
  // Gives up every wait for a peer now (server shutdown): GlobalSums returns
  // CANCELLED instead of waiting out its timeout.
  void Stop();

  const std::vector<std::string>& peers() const { return peers_; }
  uint32_t shard() const { return shard_; }
  const std::string& token() const { return token_; }

 private:
  const uint32_t shard_;
  const std::vector<std::string> peers_;
  const std::string job_id_;
  const std::string token_;
  const absl::Duration timeout_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;

  Mutex mu_;
  std::map<uint64_t, std::vector<double>> published_ ABSL_GUARDED_BY(mu_);  // the last few windows
  struct Waiter {
    uint64_t window;
    std::function<void(const std::vector<double>&)> done;
  };
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* in_flight_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_SHARD_EXCHANGE_H_
