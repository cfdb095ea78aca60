// ShardExchange: sharded servers' side channel (NormExchange over gRPC, and
// the job-wide status). Each shard publishes its NormPart of a window;
// peers fetch it with GetNormPartial, which is answered as soon as it is
// published (a parked call, not a blocked thread). Channels to the peers
// are made once, by the clients' MakeChannel (worker/client/channel.h): TLS
// when a CA for the peers is given, this shard's own certificate as client
// certificate (mutual TLS), and the shard token on every call.
//
// Thread-safe. Stop() gives up every wait for a peer (server shutdown).
#ifndef GRADACC_SERVER_SHARD_EXCHANGE_H_
#define GRADACC_SERVER_SHARD_EXCHANGE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "server/norm_exchange.h"
#include "server/peer_monitor.h"
#include "common/channel.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace gradacc {

class ShardExchange final : public NormExchange {
 public:
  // `peers[i]` is shard i's address (this shard's own entry is not
  // dialled); `connection` says how to reach them (its server is ignored).
  // INVALID_ARGUMENT when the TLS files or the token cannot be used.
  // `same_process`: the exchange of another shard this process serves (the
  // same peers and connection), whose channels (one per address) and peer
  // monitor this one shares — a process serving 128 shards would otherwise
  // keep 128 monitors asking every peer address each second.
  static absl::StatusOr<std::unique_ptr<ShardExchange>> Create(uint32_t shard, std::vector<std::string> peers,
                                                               std::string job_id, const ConnectionOptions& connection,
                                                               absl::Duration timeout,
                                                               const ShardExchange* same_process = nullptr);
  ~ShardExchange() override;

  absl::StatusOr<TorchNormState> CarryIn(uint64_t window) override;
  absl::StatusOr<NormTotals> Exchange(uint64_t window, const NormPart& local) override;
  std::optional<v1::GetNormPartialResponse> Published(uint64_t window) const override;
  void Restore(uint64_t window, const v1::GetNormPartialResponse& part) override;

  // Calls `done` with this shard's part of `window` once it is published (at
  // once when it already is). Returns an id for Cancel, 0 if done ran.
  uint64_t WhenPublished(uint64_t window, std::function<void(const v1::GetNormPartialResponse&)> done);
  void Cancel(uint64_t id);
  void Stop();

  const std::vector<std::string>& peers() const { return peers_; }
  uint32_t shard() const { return shard_; }
  const std::string& token() const { return token_; }
  // The channel to shard i (null for this shard).
  std::shared_ptr<grpc::Channel> channel(size_t i) const { return channels_[i]; }
  // Each peer's health, as the monitor last saw it (index = shard).
  std::vector<PeerMonitor::Health> PeerHealth() const { return monitor_->Get(); }

 private:
  ShardExchange(uint32_t shard, std::vector<std::string> peers, std::string job_id, std::string token,
                absl::Duration timeout);
  // Stores this shard's part of `window` and answers the peers waiting for it.
  void Publish(uint64_t window, const v1::GetNormPartialResponse& part);
  // Fetches shard `peer`'s part of `window`, waiting for it (bounded).
  absl::StatusOr<v1::GetNormPartialResponse> Fetch(size_t peer, uint64_t window);

  const uint32_t shard_;
  const std::vector<std::string> peers_;
  const std::string job_id_;
  const std::string token_;
  const absl::Duration timeout_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;

  mutable Mutex mu_;
  std::map<uint64_t, v1::GetNormPartialResponse> published_ ABSL_GUARDED_BY(mu_);  // the last few windows
  struct Waiter {
    uint64_t window;
    std::function<void(const v1::GetNormPartialResponse&)> done;
  };
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Waiter> waiters_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<grpc::ClientContext*> in_flight_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<PeerMonitor> monitor_;  // last: stopped first (by the last exchange sharing it)
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_SHARD_EXCHANGE_H_
