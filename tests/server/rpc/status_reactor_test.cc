// StatusReactor over real gRPC: GetStatus of an unsharded server, and of a
// sharded job (two shards served by one in-process server, and a shard
// whose peer does not answer), with the generated stub.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using trainer_fixtures::SmallJob;

v1::Status GetStatus(int port, bool local = false, grpc::Status* status = nullptr) {
  auto stub = v1::ControlPlane::NewStub(rpc_test::Connect(port));
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, absl::Seconds(20));
  if (local) ctx.AddMetadata("x-gradacc-local", "1");
  v1::Status response;
  const grpc::Status s = stub->GetStatus(&ctx, v1::GetStatusRequest(), &response);
  EXPECT_TRUE(s.ok()) << s.error_message();
  if (status != nullptr) *status = s;
  return response;
}

// A sharded job (2 shards): `served` of them served here on 127.0.0.1:port;
// `peers` in shard order.
std::unique_ptr<GradaccServer> StartSharded(int port, std::vector<uint32_t> served, std::vector<std::string> peers) {
  ServerOptions options;
  options.listen = absl::StrCat("127.0.0.1:", port);
  options.trainer.num_shards = 2;
  options.trainer.shard = served.front();
  options.shards = std::move(served);
  options.shard_peers = std::move(peers);
  auto server = GradaccServer::Start(SmallJob(1, 10), options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TEST(StatusReactorTest, UnshardedServerAnswersWithItsTrainersStatus) {
  auto server = rpc_test::StartServer(SmallJob(1, 10));
  ASSERT_NE(server, nullptr);
  auto stub = v1::DataPlane::NewStub(rpc_test::Connect(server->port()));
  ASSERT_TRUE(rpc_test::Join(*stub, 0).ok());
  testing::Contribution c;
  c.grad = rpc_test::Ramp(server->trainer()->layout().num_elements(), 1.0f);
  ASSERT_TRUE(rpc_test::PushContribution(*stub, server->trainer()->layout(), c).status.ok());

  const v1::Status status = GetStatus(server->port());
  EXPECT_EQ(status.job_id(), "unit");
  EXPECT_EQ(status.step(), 1u);
  EXPECT_EQ(status.version(), 1u);
  EXPECT_EQ(status.total_steps(), 10u);
  EXPECT_EQ(status.num_elements(), 418u);
  EXPECT_EQ(status.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(status.shards_size(), 0);  // no job-wide picture without shards
}

TEST(StatusReactorTest, ShardedJobStatusSummarisesEveryShard) {
  const int port = testing::FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto server = StartSharded(port, {0, 1}, {address, address});
  ASSERT_NE(server, nullptr);
  const v1::Status status = GetStatus(server->port());
  ASSERT_EQ(status.shards_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const v1::ShardSummary& s = status.shards(i);
    EXPECT_EQ(s.shard(), static_cast<uint32_t>(i));
    EXPECT_EQ(s.address(), address);
    EXPECT_TRUE(s.reachable()) << s.error();
    EXPECT_EQ(s.step(), 0u);
  }
  // Small tensors are never split: shard 0 holds w (407 elements), shard 1 b.
  EXPECT_EQ(status.shards(0).shard_begin(), 0u);
  EXPECT_EQ(status.shards(0).shard_end(), 407u);
  EXPECT_EQ(status.shards(1).shard_begin(), 407u);
  EXPECT_EQ(status.shards(1).shard_end(), 418u);
}

TEST(StatusReactorTest, PeerAskingForThisShardsOwnStatusGetsNoSummaries) {
  const int port = testing::FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto server = StartSharded(port, {0, 1}, {address, address});
  ASSERT_NE(server, nullptr);
  const v1::Status status = GetStatus(server->port(), /*local=*/true);
  EXPECT_EQ(status.shards_size(), 0);
  EXPECT_EQ(status.shard_begin(), 0u);
  EXPECT_EQ(status.shard_end(), 407u);
}

TEST(StatusReactorTest, ShardWhosePeerDoesNotAnswerReportsItUnreachableWithinBound) {
  const int port = testing::FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  // Nothing listens at the peer's address.
  const std::string away = absl::StrCat("127.0.0.1:", testing::FreePort());
  auto server = StartSharded(port, {0}, {address, away});
  ASSERT_NE(server, nullptr);
  const absl::Time start = absl::Now();
  const v1::Status status = GetStatus(server->port());
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));  // each peer call has a short deadline
  ASSERT_EQ(status.shards_size(), 2);
  EXPECT_TRUE(status.shards(0).reachable());
  EXPECT_FALSE(status.shards(1).reachable());
  EXPECT_EQ(status.shards(1).address(), away);
  EXPECT_FALSE(status.shards(1).error().empty());
}

}  // namespace
}  // namespace gradacc
