// GradaccServer: starting on a port the OS chose, the checks Start makes
// before it listens, several shards on one address, /metrics, and a
// graceful shutdown (parked pulls end, new calls are refused).
#include "server/server.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/errors.h"
#include "common/grpc_status.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using trainer_fixtures::SmallJob;

std::unique_ptr<v1::DataPlane::Stub> Stub(int port) {
  return v1::DataPlane::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
}

grpc::Status Join(v1::DataPlane::Stub& stub, uint32_t worker) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::JoinRequest request;
  request.set_worker(worker);
  v1::JoinResponse response;
  return stub.Join(&ctx, request, &response);
}

absl::StatusCode StartCode(const ServerOptions& options) {
  return GradaccServer::Start(SmallJob(1, 10), options).status().code();
}

TEST(GradaccServerTest, ListensOnAPortTheOsChoseAndServesTheJob) {
  ServerOptions options;  // 127.0.0.1:0
  auto server = GradaccServer::Start(SmallJob(2, 10), options);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->metrics_port(), 0);  // not asked for
  ASSERT_EQ((*server)->trainers().size(), 1u);
  EXPECT_EQ((*server)->trainer(), (*server)->trainers()[0]);
  auto stub = Stub((*server)->port());
  ASSERT_TRUE(Join(*stub, 1).ok());
  EXPECT_EQ((*server)->trainer()->GetStatus().workers(1).state(), v1::WORKER_STATE_JOINED);
}

TEST(GradaccServerTest, RefusesInconsistentOptionsBeforeListening) {
  ServerOptions remote;
  remote.listen = "0.0.0.0:0";  // plaintext beyond loopback
  EXPECT_EQ(StartCode(remote), absl::StatusCode::kFailedPrecondition);
  ServerOptions half_tls;
  half_tls.tls_cert_file = "/nonexistent/cert.pem";
  EXPECT_EQ(StartCode(half_tls), absl::StatusCode::kInvalidArgument);
  ServerOptions ca_alone;
  ca_alone.tls_client_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(StartCode(ca_alone), absl::StatusCode::kInvalidArgument);
  ServerOptions remote_metrics;
  remote_metrics.metrics_listen = "0.0.0.0:0";
  EXPECT_EQ(StartCode(remote_metrics), absl::StatusCode::kFailedPrecondition);
}

TEST(GradaccServerTest, RefusesShardsTheJobDoesNotHave) {
  ServerOptions out_of_range;
  out_of_range.trainer.num_shards = 2;
  out_of_range.trainer.shard = 2;
  EXPECT_EQ(StartCode(out_of_range), absl::StatusCode::kInvalidArgument);
  ServerOptions twice;
  twice.trainer.num_shards = 2;
  twice.shards = {1, 1};
  EXPECT_EQ(StartCode(twice), absl::StatusCode::kInvalidArgument);
  ServerOptions few_peers;
  few_peers.trainer.num_shards = 2;
  few_peers.shard_peers = {"127.0.0.1:1"};
  EXPECT_EQ(StartCode(few_peers), absl::StatusCode::kInvalidArgument);
  ServerOptions no_shard_token;
  no_shard_token.trainer.num_shards = 2;
  no_shard_token.shard_peers = {"127.0.0.1:1", "127.0.0.1:2"};
  no_shard_token.tokens.worker = "worker-secret";
  EXPECT_EQ(StartCode(no_shard_token), absl::StatusCode::kFailedPrecondition);
}

TEST(GradaccServerTest, ServesSeveralShardsOfAJobOnOneAddress) {
  int port = 0;
  auto server = rpc_test::StartTwoShards(SmallJob(1, 10), &port);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->port(), port);
  const std::vector<Trainer*> trainers = server->trainers();
  ASSERT_EQ(trainers.size(), 2u);
  EXPECT_EQ(trainers[0]->shard(), 0u);
  EXPECT_EQ(trainers[1]->shard(), 1u);
  EXPECT_EQ(trainers[0]->end(), trainers[1]->begin());
  EXPECT_EQ(trainers[1]->end(), 418u);
}

TEST(GradaccServerTest, ServesMetricsOnAPortTheOsChose) {
  ServerOptions options;
  options.metrics_listen = "127.0.0.1:0";
  auto server = GradaccServer::Start(SmallJob(1, 10), options);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->metrics_port(), 0);
  const testing::HttpReply metrics = testing::HttpGet((*server)->metrics_port(), "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("gradacc_"), std::string::npos);
  EXPECT_EQ(testing::HttpGet((*server)->metrics_port(), "/elsewhere").status, 404);
}

TEST(GradaccServerTest, ShutdownEndsParkedPullsAndRefusesNewCalls) {
  auto server = GradaccServer::Start(SmallJob(1, 10), ServerOptions());
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = Stub((*server)->port());
  ASSERT_TRUE(Join(*stub, 0).ok());
  grpc::Status pulled;
  std::thread puller([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
    v1::PullRequest request;
    request.set_min_version(1);  // parked: nobody pushes
    auto reader = stub->Pull(&ctx, request);
    v1::PullResponse message;
    while (reader->Read(&message)) {
    }
    pulled = reader->Finish();
  });
  absl::SleepFor(absl::Milliseconds(200));
  const absl::Time start = absl::Now();
  (*server)->Shutdown(absl::Seconds(2));
  (*server)->Wait();
  puller.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  EXPECT_EQ(pulled.error_code(), grpc::StatusCode::UNAVAILABLE) << pulled.error_message();
  EXPECT_EQ(ReasonOf(FromGrpcStatus(pulled)), v1::ERROR_REASON_SHUTTING_DOWN);
  EXPECT_EQ(Join(*stub, 0).error_code(), grpc::StatusCode::UNAVAILABLE);
  (*server)->Shutdown();  // a second call is harmless
}

}  // namespace
}  // namespace gradacc
