#include "server/shard_exchange.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/wire.h"
#include "gradacc/v1/control.grpc.pb.h"

namespace gradacc {
namespace {

v1::GetNormPartialResponse ToProto(uint32_t shard, const NormPart& part) {
  v1::GetNormPartialResponse r;
  r.set_shard(shard);
  for (float f : part.finished) r.add_finished(f);
  r.set_found_inf(part.found_inf);
  if (part.carry_tensor.has_value()) {
    v1::NormCarry* c = r.mutable_carry();
    c->set_present(true);
    c->set_tensor(*part.carry_tensor);
    for (float l : part.carry.lanes) c->add_lanes(l);
    for (uint32_t i = 0; i < part.carry.tail_count; ++i) c->add_tail(part.carry.tail[i]);
  }
  return r;
}

}  // namespace

ShardExchange::ShardExchange(uint32_t shard, std::vector<std::string> peers, std::string job_id, std::string token,
                             absl::Duration timeout)
    : shard_(shard), peers_(std::move(peers)), job_id_(std::move(job_id)), token_(std::move(token)),
      timeout_(timeout) {}

absl::StatusOr<std::unique_ptr<ShardExchange>> ShardExchange::Create(uint32_t shard, std::vector<std::string> peers,
                                                                     std::string job_id,
                                                                     const ConnectionOptions& connection,
                                                                     absl::Duration timeout,
                                                                     const ShardExchange* same_process) {
  std::unique_ptr<ShardExchange> exchange(
      new ShardExchange(shard, std::move(peers), std::move(job_id), connection.token, timeout));
  if (same_process != nullptr && same_process->peers_ != exchange->peers_) {
    return absl::InvalidArgumentError("shards served by one process must list the same peers");
  }
  // One channel per peer address: shards one process serves share it (each
  // call names its shard).
  absl::flat_hash_map<std::string, std::shared_ptr<grpc::Channel>> by_address;
  if (same_process != nullptr) {
    for (size_t i = 0; i < same_process->channels_.size(); ++i) {
      const std::shared_ptr<grpc::Channel>& channel = same_process->channels_[i];
      if (channel != nullptr) by_address.emplace(same_process->peers_[i], channel);
    }
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  for (size_t i = 0; i < exchange->peers_.size(); ++i) {
    if (i == shard) {
      exchange->channels_.push_back(nullptr);
      continue;
    }
    std::shared_ptr<grpc::Channel>& channel = by_address[exchange->peers_[i]];
    if (channel == nullptr) {
      ConnectionOptions to_peer = connection;
      to_peer.server = exchange->peers_[i];
      auto made = MakeChannel(to_peer, args);
      if (!made.ok()) {
        return absl::Status(made.status().code(), absl::StrCat("channel to shard ", i, ": ", made.status().message()));
      }
      channel = *std::move(made);
    }
    exchange->channels_.push_back(channel);
  }
  // Every shard of a process sees the same peers from the same address.
  exchange->monitor_ = same_process != nullptr
                           ? same_process->monitor_
                           : std::make_shared<PeerMonitor>(shard, exchange->peers_, exchange->channels_,
                                                           exchange->token_);
  return exchange;
}

ShardExchange::~ShardExchange() = default;

absl::StatusOr<v1::GetNormPartialResponse> ShardExchange::Fetch(size_t peer, uint64_t window) {
  auto stub = v1::ControlPlane::NewStub(channels_[peer]);
  const absl::Time deadline = absl::Now() + timeout_;
  while (true) {
    grpc::ClientContext ctx;
    {
      MutexLock lock(&mu_);
      if (stopped_) return absl::CancelledError("shard exchange stopped: the server is shutting down");
      in_flight_.push_back(&ctx);
    }
    // wait_for_ready: a peer that is restarting is waited for, up to the
    // deadline, without a retry loop of our own.
    ctx.set_deadline(absl::ToChronoTime(deadline));
    ctx.set_wait_for_ready(true);
    if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
    ctx.AddMetadata(kShardMetadataKey, absl::StrCat(peer));
    v1::GetNormPartialRequest req;
    req.set_job_id(job_id_);
    req.set_window(window);
    v1::GetNormPartialResponse resp;
    const grpc::Status s = stub->GetNormPartial(&ctx, req, &resp);
    {
      MutexLock lock(&mu_);
      in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), &ctx));
      if (stopped_) return absl::CancelledError("shard exchange stopped: the server is shutting down");
    }
    if (s.ok()) return resp;
    // A peer that went away mid-call (GOAWAY) is asked again.
    if (absl::Now() >= deadline || s.error_code() != grpc::StatusCode::UNAVAILABLE) {
      return Refusal(v1::ERROR_REASON_PEER_SHARD_AWAY,
                     absl::StrFormat("shard %d (%s) gave no norm for window %d: %s", peer, peers_[peer], window,
                                     s.error_message()),
                     {{"shard", absl::StrCat(peer)}});
    }
  }
}

absl::StatusOr<TorchNormState> ShardExchange::CarryIn(uint64_t window) {
  if (shard_ == 0) return absl::InternalError("shard 0 has no carry in");
  auto part = Fetch(shard_ - 1, window);
  if (!part.ok()) return part.status();
  const v1::NormCarry& c = part->carry();
  if (!c.present() || c.lanes_size() != 8 || c.tail_size() > 7) {
    return absl::InternalError(absl::StrFormat("shard %d passed no carry for window %d", shard_ - 1, window));
  }
  TorchNormState state;
  for (int i = 0; i < 8; ++i) state.lanes[i] = c.lanes(i);
  state.tail_count = static_cast<uint32_t>(c.tail_size());
  for (int i = 0; i < c.tail_size(); ++i) state.tail[i] = c.tail(i);
  return state;
}

void ShardExchange::Publish(uint64_t window, const v1::GetNormPartialResponse& part) {
  std::vector<std::function<void(const v1::GetNormPartialResponse&)>> ready;
  {
    MutexLock lock(&mu_);
    published_[window] = part;
    while (published_.size() > 64) published_.erase(published_.begin());
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->second.window == window) {
        ready.push_back(std::move(it->second.done));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& done : ready) done(part);
}

std::optional<v1::GetNormPartialResponse> ShardExchange::Published(uint64_t window) const {
  MutexLock lock(&mu_);
  auto it = published_.find(window);
  if (it == published_.end()) return std::nullopt;
  return it->second;
}

void ShardExchange::Restore(uint64_t window, const v1::GetNormPartialResponse& part) { Publish(window, part); }

absl::StatusOr<NormTotals> ShardExchange::Exchange(uint64_t window, const NormPart& local) {
  const v1::GetNormPartialResponse mine = ToProto(shard_, local);
  Publish(window, mine);
  // Each tensor is finished on exactly one shard (0 elsewhere): adding the
  // parts in shard order gives every shard the same bits.
  NormTotals totals;
  std::vector<float>& total = totals.sums;
  total.assign(local.finished.size(), 0.0f);
  for (size_t i = 0; i < peers_.size(); ++i) {
    v1::GetNormPartialResponse part = mine;
    if (i != shard_) {
      auto fetched = Fetch(i, window);
      if (!fetched.ok()) return fetched.status();
      part = *std::move(fetched);
    }
    if (static_cast<size_t>(part.finished_size()) != total.size()) {
      return absl::InternalError(
          absl::StrFormat("shard %d sent %d tensor sums, not %d", i, part.finished_size(), total.size()));
    }
    for (size_t t = 0; t < total.size(); ++t) total[t] += part.finished(static_cast<int>(t));
    totals.found_inf |= part.found_inf();
  }
  return totals;
}

uint64_t ShardExchange::WhenPublished(uint64_t window, std::function<void(const v1::GetNormPartialResponse&)> done) {
  v1::GetNormPartialResponse value;
  {
    MutexLock lock(&mu_);
    auto it = published_.find(window);
    if (it == published_.end()) {
      const uint64_t id = next_id_++;
      waiters_[id] = Waiter{window, std::move(done)};
      return id;
    }
    value = it->second;
  }
  done(value);
  return 0;
}

void ShardExchange::Stop() {
  MutexLock lock(&mu_);
  stopped_ = true;
  for (grpc::ClientContext* ctx : in_flight_) ctx->TryCancel();
}

void ShardExchange::Cancel(uint64_t id) {
  MutexLock lock(&mu_);
  waiters_.erase(id);
}

}  // namespace gradacc
