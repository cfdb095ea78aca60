// PeerMonitor: a shard's view of its peers, kept by asking each peer
// address for its own status (over real gRPC, to a fake peer on a port the
// OS chose): reachable, away with the error and since when, back again;
// one question per address for shards served together.
#include "server/peer_monitor.h"

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

// A peer shard's GetStatus: records what each call carried; fails with
// `fail` while it is set.
class FakePeer final : public v1::ControlPlane::Service {
 public:
  grpc::Status GetStatus(grpc::ServerContext* ctx, const v1::GetStatusRequest*, v1::Status*) override {
    MutexLock lock(&mu_);
    const auto& md = ctx->client_metadata();
    const auto get = [&](const char* key) {
      auto it = md.find(key);
      return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
    };
    ++calls_by_shard_[get("x-gradacc-shard")];
    local_ = get("x-gradacc-local");
    authorization_ = get("authorization");
    if (!fail_.empty()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, fail_);
    return grpc::Status::OK;
  }
  void set_fail(std::string why) {
    MutexLock lock(&mu_);
    fail_ = std::move(why);
  }
  int calls(const std::string& shard) {
    MutexLock lock(&mu_);
    return calls_by_shard_[shard];
  }
  std::string local() {
    MutexLock lock(&mu_);
    return local_;
  }
  std::string authorization() {
    MutexLock lock(&mu_);
    return authorization_;
  }

 private:
  Mutex mu_;
  std::map<std::string, int> calls_by_shard_ ABSL_GUARDED_BY(mu_);
  std::string local_ ABSL_GUARDED_BY(mu_), authorization_ ABSL_GUARDED_BY(mu_), fail_ ABSL_GUARDED_BY(mu_);
};

class PeerMonitorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&peer_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    address_ = absl::StrCat("127.0.0.1:", port_);
    channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  }
  void TearDown() override { server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1))); }

  // Polls `done` for up to 10 s.
  static bool Eventually(const std::function<bool()>& done) {
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (!done()) {
      if (absl::Now() > give_up) return false;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return true;
  }

  FakePeer peer_;
  int port_ = 0;
  std::string address_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(PeerMonitorTest, PeersStartReachableAndThisShardIsNotAsked) {
  PeerMonitor monitor(0, {"self:1", address_}, {nullptr, channel_}, "", absl::Hours(1));
  const auto health = monitor.Get();
  ASSERT_EQ(health.size(), 2u);
  EXPECT_TRUE(health[0].reachable);
  EXPECT_TRUE(health[1].reachable);
  EXPECT_EQ(health[1].away_since, absl::InfinitePast());
  EXPECT_EQ(peer_.calls("1"), 0);  // the first question comes after one period
}

TEST_F(PeerMonitorTest, PeerIsAskedForItsOwnStatusWithTheShardToken) {
  PeerMonitor monitor(0, {"self:1", address_}, {nullptr, channel_}, "shard-secret", absl::Milliseconds(20));
  ASSERT_TRUE(Eventually([&] { return peer_.calls("1") >= 2; }));
  EXPECT_EQ(peer_.local(), "1");
  EXPECT_EQ(peer_.authorization(), "Bearer shard-secret");
  EXPECT_TRUE(monitor.Get()[1].reachable);
  EXPECT_TRUE(monitor.Get()[1].error.empty());
}

TEST_F(PeerMonitorTest, FailingPeerIsAwayWithItsErrorUntilItAnswersAgain) {
  PeerMonitor monitor(0, {"self:1", address_}, {nullptr, channel_}, "", absl::Milliseconds(20));
  const absl::Time before = absl::Now();
  peer_.set_fail("restarting");
  ASSERT_TRUE(Eventually([&] { return !monitor.Get()[1].reachable; }));
  const PeerMonitor::Health away = monitor.Get()[1];
  EXPECT_EQ(away.error, "restarting");
  EXPECT_GE(away.away_since, before);
  EXPECT_LE(away.away_since, absl::Now());
  // Still away later: the absence keeps its start.
  const int calls = peer_.calls("1");
  ASSERT_TRUE(Eventually([&] { return peer_.calls("1") >= calls + 2; }));
  EXPECT_EQ(monitor.Get()[1].away_since, away.away_since);
  peer_.set_fail("");
  ASSERT_TRUE(Eventually([&] { return monitor.Get()[1].reachable; }));
  EXPECT_TRUE(monitor.Get()[1].error.empty());
  EXPECT_EQ(monitor.Get()[1].away_since, absl::InfinitePast());
}

TEST_F(PeerMonitorTest, PeerWithNothingListeningIsAway) {
  const std::string nowhere = absl::StrCat("127.0.0.1:", testing::FreePort());
  auto channel = grpc::CreateChannel(nowhere, grpc::InsecureChannelCredentials());
  PeerMonitor monitor(1, {nowhere, "self:1"}, {channel, nullptr}, "", absl::Milliseconds(20));
  ASSERT_TRUE(Eventually([&] { return !monitor.Get()[0].reachable; }));
  EXPECT_FALSE(monitor.Get()[0].error.empty());
  EXPECT_TRUE(monitor.Get()[1].reachable);  // this shard
}

TEST_F(PeerMonitorTest, ShardsServedAtOneAddressAreAskedOnceAndShareTheAnswer) {
  PeerMonitor monitor(0, {"self:1", address_, address_}, {nullptr, channel_, channel_}, "", absl::Milliseconds(20));
  ASSERT_TRUE(Eventually([&] { return peer_.calls("1") >= 3; }));
  EXPECT_EQ(peer_.calls("2"), 0);
  peer_.set_fail("down");
  ASSERT_TRUE(Eventually([&] { return !monitor.Get()[1].reachable; }));
  const auto health = monitor.Get();
  EXPECT_FALSE(health[2].reachable);
  EXPECT_EQ(health[2].error, "down");
  EXPECT_EQ(health[2].away_since, health[1].away_since);
}

}  // namespace
}  // namespace gradacc
