#include "server/rpc/status_reactor.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/tsan.h"
#include "common/wire.h"
#include "gradacc/v1/control.grpc.pb.h"

namespace gradacc {

StatusReactor::StatusReactor(Trainer* trainer, ShardExchange* exchange, bool local_only, v1::Status* response)
    : trainer_(trainer), exchange_(local_only ? nullptr : exchange), response_(response) {
  *response_ = trainer_->GetStatus();
  if (exchange_ == nullptr) {
    TsanRelease(this);
    Finish(grpc::Status::OK);
    return;
  }
  const size_t n = exchange_->peers().size();
  peers_.resize(n);
  {
    MutexLock lock(&mu_);
    pending_ = n;
  }
  for (size_t i = 0; i < n; ++i) {
    peers_[i] = std::make_unique<Peer>();
    if (i == exchange_->shard()) {
      peers_[i]->status = *response_;
      peers_[i]->ok = true;
      PeerDone(i, true);
      continue;
    }
    Peer* p = peers_[i].get();
    p->context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    // One level deep: a peer asked this way answers with its own status.
    p->context.AddMetadata("x-gradacc-local", "1");
    p->context.AddMetadata(kShardMetadataKey, absl::StrCat(i));
    if (!exchange_->token().empty()) p->context.AddMetadata("authorization", "Bearer " + exchange_->token());
    p->stub = v1::ControlPlane::NewStub(exchange_->channel(i));
    p->stub->async()->GetStatus(&p->context, &request_, &p->status, [this, i](grpc::Status s) {
      peers_[i]->error = s.error_message().empty() && !s.ok() ? absl::StrCat("gRPC code ", s.error_code())
                                                               : s.error_message();
      PeerDone(i, s.ok());
    });
  }
}

void StatusReactor::PeerDone(size_t i, bool ok) {
  peers_[i]->ok = ok;
  {
    MutexLock lock(&mu_);
    if (--pending_ > 0) return;
  }
  Summarise();
  TsanRelease(this);
  Finish(grpc::Status::OK);
}

void StatusReactor::Summarise() {
  const std::vector<PeerMonitor::Health> health = exchange_->PeerHealth();
  for (size_t i = 0; i < peers_.size(); ++i) {
    const Peer& p = *peers_[i];
    v1::ShardSummary* summary = response_->add_shards();
    summary->set_shard(static_cast<uint32_t>(i));
    summary->set_address(exchange_->peers()[i]);
    summary->set_reachable(p.ok);
    if (!health[i].reachable) summary->set_away_since_unix_micros(absl::ToUnixMicros(health[i].away_since));
    if (!p.ok) {
      summary->set_error(!p.error.empty() ? p.error : health[i].error);
      continue;
    }
    summary->set_step(p.status.step());
    summary->set_state(p.status.state());
    summary->set_contributions_received(p.status.window().contributions_received());
    summary->set_contributions_expected(p.status.window().contributions_expected());
    summary->set_shard_begin(p.status.shard_begin());
    summary->set_shard_end(p.status.shard_end());
  }
}

}  // namespace gradacc
