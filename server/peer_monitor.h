// PeerMonitor: a sharded server process's view of its peer shards (one for
// all the shards the process serves: ShardExchange shares it). Once a second it
// asks every peer address for a shard's own status (one level deep, 1 s
// deadline; shards served by one process share its answer, and those this
// process serves are not asked) and keeps, per peer, whether it answered
// and since when it has not, with the error; it logs each change ("shard 1
// (host:port) does not answer: ...", "... answers again after 12.3 s").
// Status (ShardSummary.error, away_since_unix_micros) and the CLI name a
// shard that stays away.
//
// Thread-safe. The destructor stops the thread (bounded by one call's
// deadline).
#ifndef GRADACC_SERVER_PEER_MONITOR_H_
#define GRADACC_SERVER_PEER_MONITOR_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "gradacc/v1/control.grpc.pb.h"

namespace gradacc {

class PeerMonitor {
 public:
  struct Health {
    bool reachable = true;  // until a call fails
    absl::Time away_since = absl::InfinitePast();  // first failure of the current absence
    std::string error;  // the last failure, while away
  };

  // `channels[i]` reaches shard i (null for this shard, which is not asked).
  PeerMonitor(uint32_t shard, std::vector<std::string> peers, std::vector<std::shared_ptr<grpc::Channel>> channels,
              std::string token, absl::Duration period = absl::Seconds(1));
  ~PeerMonitor();

  std::vector<Health> Get() const;

 private:
  void Run();
  // Asks the first shard of `group` (shards at one address) and records
  // the answer for all of them.
  void Probe(const std::vector<size_t>& group);

  const uint32_t shard_;
  const std::vector<std::string> peers_;
  std::vector<std::unique_ptr<v1::ControlPlane::Stub>> stubs_;  // null for this shard
  const std::string token_;
  const absl::Duration period_;
  mutable Mutex mu_;
  std::vector<Health> health_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_PEER_MONITOR_H_
