// Shards 0 and 1 of a two-shard job, each with its ShardExchange, served by
// one in-process gRPC server (ControlPlaneServiceImpl over a ShardRouter, as
// GradaccServer serves several shards on one address) at a port the OS
// chose. No Trainer: GetNormPartial needs only the exchanges. For the tests
// of ShardExchange and of NormReactor.
#ifndef GRADACC_TESTS_SERVER_EXCHANGE_FIXTURE_H_
#define GRADACC_TESTS_SERVER_EXCHANGE_FIXTURE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/tsan.h"
#include "gtest/gtest.h"
#include "server/rpc/control_plane_service.h"
#include "server/rpc/shard_router.h"
#include "server/shard_exchange.h"
#include "tests/subprocess.h"

namespace gradacc::exchange_fixture {

class TwoShards {
 public:
  // `timeout`: how long each exchange waits for the other shard's part.
  explicit TwoShards(absl::Duration timeout = absl::Seconds(20)) {
    // The peers' addresses are needed before the server starts: a port the
    // OS chose, taken again at once.
    const int port = testing::FreePort();
    address_ = absl::StrCat("127.0.0.1:", port);
    const std::vector<std::string> peers = {address_, address_};
    auto e0 = ShardExchange::Create(0, peers, "job", ConnectionOptions(), timeout);
    EXPECT_TRUE(e0.ok()) << e0.status();
    exchanges_[0] = *std::move(e0);
    auto e1 = ShardExchange::Create(1, peers, "job", ConnectionOptions(), timeout, exchanges_[0].get());
    EXPECT_TRUE(e1.ok()) << e1.status();
    exchanges_[1] = *std::move(e1);
    router_ = std::make_unique<ShardRouter>(
        std::vector<ServedShard>{{0, nullptr, exchanges_[0].get()}, {1, nullptr, exchanges_[1].get()}});
    service_ = std::make_unique<ControlPlaneServiceImpl>(router_.get(), TokenSet());
    grpc::ServerBuilder builder;
    int bound = 0;
    builder.AddListeningPort(address_, grpc::InsecureServerCredentials(), &bound);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    EXPECT_NE(server_, nullptr);
    EXPECT_EQ(bound, port);
  }
  ~TwoShards() {
    for (auto& e : exchanges_) e->Stop();
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    server_.reset();
    // Every reactor is done (OnDone released this; gRPC's own ordering is
    // invisible to ThreadSanitizer): the exchanges may go.
    TsanAcquire(&kTsanServerRpcsDone);
  }

  ShardExchange& exchange(int shard) { return *exchanges_[shard]; }
  const std::string& address() const { return address_; }
  std::shared_ptr<grpc::Channel> Channel() const {
    return grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  }

 private:
  std::string address_;
  std::unique_ptr<ShardExchange> exchanges_[2];
  std::unique_ptr<ShardRouter> router_;
  std::unique_ptr<ControlPlaneServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
};

// A part of a window as shard `shard` would publish it.
inline v1::GetNormPartialResponse Part(uint32_t shard, std::vector<float> finished, bool found_inf = false) {
  v1::GetNormPartialResponse p;
  p.set_shard(shard);
  for (float f : finished) p.add_finished(f);
  p.set_found_inf(found_inf);
  return p;
}

}  // namespace gradacc::exchange_fixture

#endif  // GRADACC_TESTS_SERVER_EXCHANGE_FIXTURE_H_
