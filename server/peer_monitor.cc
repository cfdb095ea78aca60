#include "server/peer_monitor.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/wire.h"

namespace gradacc {

PeerMonitor::PeerMonitor(uint32_t shard, std::vector<std::string> peers,
                         std::vector<std::shared_ptr<grpc::Channel>> channels, std::string token,
                         absl::Duration period)
    : shard_(shard),
      peers_(std::move(peers)),
      token_(std::move(token)),
      period_(period),
      health_(peers_.size()) {
  for (const auto& channel : channels) stubs_.push_back(channel ? v1::ControlPlane::NewStub(channel) : nullptr);
  thread_ = std::thread([this] { Run(); });
}

PeerMonitor::~PeerMonitor() {
  {
    MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

std::vector<PeerMonitor::Health> PeerMonitor::Get() const {
  MutexLock lock(&mu_);
  return health_;
}

void PeerMonitor::Run() {
  // One probe per address: shards that one process serves answer (or not)
  // together; those this process serves are not asked.
  std::vector<std::vector<size_t>> groups;
  for (size_t i = 0; i < peers_.size(); ++i) {
    if (peers_[i] == peers_[shard_] || stubs_[i] == nullptr) continue;
    auto same = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return peers_[g[0]] == peers_[i]; });
    if (same == groups.end()) {
      groups.push_back({i});
    } else {
      same->push_back(i);
    }
  }
  while (true) {
    {
      MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(Condition(&stop_), period_)) return;
    }
    for (const std::vector<size_t>& group : groups) Probe(group);
  }
}

void PeerMonitor::Probe(const std::vector<size_t>& group) {
  const size_t first = group.front();
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  ctx.AddMetadata("x-gradacc-local", "1");
  ctx.AddMetadata(kShardMetadataKey, absl::StrCat(first));
  if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
  v1::GetStatusRequest request;
  v1::Status response;
  const grpc::Status s = stubs_[first]->GetStatus(&ctx, request, &response);
  const absl::Time now = absl::Now();
  // Shards 1, 5, 9 (host:port); a long list is cut after four.
  const size_t named = group.size() > 6 ? 4 : group.size();
  std::string list = absl::StrJoin(group.begin(), group.begin() + named, ", ");
  if (named < group.size()) absl::StrAppend(&list, ", ... (", group.size(), " shards)");
  const std::string who = absl::StrFormat("shard%s %s (%s)", group.size() > 1 ? "s" : "", list, peers_[first]);
  MutexLock lock(&mu_);
  Health& h = health_[first];
  if (s.ok()) {
    if (!h.reachable) {
      GRADACC_LOG(INFO, "%s answer%s again after %s", who, group.size() > 1 ? "" : "s",
                  absl::FormatDuration(absl::Trunc(now - h.away_since, absl::Milliseconds(100))));
    }
    h = Health{};
  } else {
    h.error = s.error_message().empty() ? absl::StrFormat("gRPC code %d", s.error_code()) : s.error_message();
    if (h.reachable) {
      h.reachable = false;
      h.away_since = now;
      GRADACC_LOG(WARNING, "%s do%s not answer: %s", who, group.size() > 1 ? "" : "es", h.error);
    }
  }
  for (size_t i : group) health_[i] = h;
}

}  // namespace gradacc
