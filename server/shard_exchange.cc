#include "server/shard_exchange.h"

#include <grpcpp/grpcpp.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gradacc/v1/control.grpc.pb.h"

namespace gradacc {

ShardExchange::ShardExchange(uint32_t shard, std::vector<std::string> peers, std::string job_id, std::string token,
                             absl::Duration timeout)
    : shard_(shard), peers_(std::move(peers)), job_id_(std::move(job_id)), token_(std::move(token)),
      timeout_(timeout) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  for (size_t i = 0; i < peers_.size(); ++i) {
    channels_.push_back(i == shard_ ? nullptr
                                    : grpc::CreateCustomChannel(peers_[i], grpc::InsecureChannelCredentials(), args));
  }
}

ShardExchange::~ShardExchange() = default;

absl::StatusOr<std::vector<double>> ShardExchange::GlobalSums(uint64_t window, const std::vector<double>& local) {
  std::vector<std::function<void(const std::vector<double>&)>> ready;
  {
    MutexLock lock(&mu_);
    published_[window] = local;
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
  for (auto& done : ready) done(local);
  // Every shard adds the parts in shard order: the same bits everywhere.
  std::vector<double> total(local.size(), 0.0);
  const absl::Time deadline = absl::Now() + timeout_;
  for (size_t i = 0; i < peers_.size(); ++i) {
    if (i == shard_) {
      for (size_t t = 0; t < local.size(); ++t) total[t] += local[t];
      continue;
    }
    auto stub = v1::ControlPlane::NewStub(channels_[i]);
    while (true) {
      grpc::ClientContext ctx;
      {
        MutexLock lock(&mu_);
        if (stopped_) return absl::CancelledError("shard exchange stopped: the server is shutting down");
        in_flight_ = &ctx;
      }
      ctx.set_deadline(absl::ToChronoTime(deadline));
      ctx.set_wait_for_ready(true);
      if (!token_.empty()) ctx.AddMetadata("authorization", "Bearer " + token_);
      v1::GetNormPartialRequest req;
      req.set_job_id(job_id_);
      req.set_window(window);
      v1::GetNormPartialResponse resp;
      const grpc::Status s = stub->GetNormPartial(&ctx, req, &resp);
      {
        MutexLock lock(&mu_);
        in_flight_ = nullptr;
        if (stopped_) return absl::CancelledError("shard exchange stopped: the server is shutting down");
      }
      if (s.ok()) {
        if (static_cast<size_t>(resp.tensor_sums_size()) != local.size()) {
          return absl::InternalError(absl::StrFormat("shard %d sent %d tensor sums, not %d", i,
                                                     resp.tensor_sums_size(), local.size()));
        }
        for (size_t t = 0; t < local.size(); ++t) total[t] += resp.tensor_sums(static_cast<int>(t));
        break;
      }
      if (absl::Now() >= deadline || (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
                                      s.error_code() != grpc::StatusCode::CANCELLED)) {
        return absl::UnavailableError(absl::StrFormat("shard %d (%s) gave no norm for window %d: %s", i, peers_[i],
                                                      window, s.error_message()));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return total;
}

uint64_t ShardExchange::WhenPublished(uint64_t window, std::function<void(const std::vector<double>&)> done) {
  std::vector<double> value;
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
  if (in_flight_ != nullptr) in_flight_->TryCancel();
}

void ShardExchange::Cancel(uint64_t id) {
  MutexLock lock(&mu_);
  waiters_.erase(id);
}

}  // namespace gradacc
