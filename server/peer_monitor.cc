#include "server/peer_monitor.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_format.h"

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
  while (true) {
    {
      MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(Condition(&stop_), period_)) return;
    }
    for (size_t i = 0; i < peers_.size(); ++i) {
      if (i != shard_ && stubs_[i] != nullptr) Probe(i);
    }
  }
}

void PeerMonitor::Probe(size_t i) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
  ctx.AddMetadata("x-gradacc-local", "1");
  if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
  v1::GetStatusRequest request;
  v1::Status response;
  const grpc::Status s = stubs_[i]->GetStatus(&ctx, request, &response);
  const absl::Time now = absl::Now();
  MutexLock lock(&mu_);
  Health& h = health_[i];
  if (s.ok()) {
    if (!h.reachable) {
      absl::FPrintF(stderr, "gradacc-server: shard %d (%s) answers again after %s\n", i, peers_[i],
                    absl::FormatDuration(absl::Trunc(now - h.away_since, absl::Milliseconds(100))));
    }
    h = Health{};
    return;
  }
  h.error = s.error_message().empty() ? absl::StrFormat("gRPC code %d", s.error_code()) : s.error_message();
  if (h.reachable) {
    h.reachable = false;
    h.away_since = now;
    absl::FPrintF(stderr, "gradacc-server: shard %d (%s) does not answer: %s\n", i, peers_[i], h.error);
  }
}

}  // namespace gradacc
