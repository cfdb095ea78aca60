// DataPlaneServiceImpl over real gRPC on a GradaccServer: Join, Leave,
// AttachSharedMemory, a pull request that does not parse, the worker token
// on every call, and calls routed to one of several shards served.
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using rpc_test::Reason;
using trainer_fixtures::SmallJob;

class DataPlaneServiceTest : public ::testing::Test {
 protected:
  void Start(ServerOptions options = {}) {
    server_ = rpc_test::StartServer(SmallJob(2, 10), options);
    ASSERT_NE(server_, nullptr);
    channel_ = rpc_test::Connect(server_->port());
    stub_ = v1::DataPlane::NewStub(channel_);
  }
  v1::WorkerState StateOf(uint32_t worker) { return server_->trainer()->GetStatus().workers(worker).state(); }

  std::unique_ptr<GradaccServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DataPlane::Stub> stub_;
};

TEST_F(DataPlaneServiceTest, JoinAnswersWithTheJobAndTheOpenWindow) {
  Start();
  v1::JoinResponse response;
  const grpc::Status s = rpc_test::Join(*stub_, 1, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.job().job_id(), "unit");
  EXPECT_EQ(response.job().window().num_workers(), 2u);
  EXPECT_EQ(response.window(), 0u);
  EXPECT_EQ(response.version(), 0u);
  EXPECT_EQ(response.num_elements(), 418u);
  EXPECT_FALSE(response.job_done());
  EXPECT_EQ(StateOf(1), v1::WORKER_STATE_JOINED);
  // A rank the job does not have.
  const grpc::Status unknown = rpc_test::Join(*stub_, 7);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reason(unknown), v1::ERROR_REASON_UNKNOWN_WORKER) << unknown.error_message();
}

TEST_F(DataPlaneServiceTest, LeaveMarksTheWorkerLeft) {
  Start();
  ASSERT_TRUE(rpc_test::Join(*stub_, 0).ok());
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  v1::LeaveRequest request;
  request.set_worker(0);
  v1::LeaveResponse response;
  const grpc::Status s = stub_->Leave(&ctx, request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(StateOf(0), v1::WORKER_STATE_LEFT);
}

TEST_F(DataPlaneServiceTest, AttachSharedMemoryWithoutASegmentFolderSaysWhyNot) {
  Start();
  ASSERT_TRUE(rpc_test::Join(*stub_, 0).ok());
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  v1::AttachSharedMemoryRequest request;
  request.set_worker(0);
  v1::AttachSharedMemoryResponse response;
  const grpc::Status s = stub_->AttachSharedMemory(&ctx, request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(response.available());
  EXPECT_FALSE(response.reason().empty());
  EXPECT_TRUE(response.grad_path().empty());
}

TEST_F(DataPlaneServiceTest, PullRequestThatDoesNotParseIsAProtocolError) {
  Start();
  // Raw bytes on the Pull method: field 1 with a length running past the end.
  const std::string junk = "\x0a\x7f\x01";
  grpc::Slice slice(junk);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  const grpc::internal::RpcMethod method("/gradacc.v1.DataPlane/Pull", grpc::internal::RpcMethod::SERVER_STREAMING,
                                         channel_);
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel_.get(), method, &ctx, request));
  grpc::ByteBuffer message;
  EXPECT_FALSE(reader->Read(&message));
  const grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reason(s), v1::ERROR_REASON_PROTOCOL) << s.error_message();
}

TEST_F(DataPlaneServiceTest, EveryDataPlaneCallNeedsTheWorkerToken) {
  ServerOptions options;
  options.tokens.worker = "worker-secret";
  options.tokens.reader = "reader-secret";
  Start(options);
  EXPECT_EQ(Reason(rpc_test::Join(*stub_, 0, nullptr, "reader-secret")), v1::ERROR_REASON_PERMISSION_DENIED);
  ASSERT_TRUE(rpc_test::Join(*stub_, 0, nullptr, "worker-secret").ok());
  // Push with a reader token: refused before the stream is read.
  testing::Contribution c;
  std::vector<v1::PushRequest> messages = {
      rpc_test::HeaderRequest(testing::HeaderOf(c, server_->trainer()->layout().num_elements()))};
  const auto push = rpc_test::PushMessages(*stub_, messages, absl::Seconds(20), "reader-secret");
  EXPECT_EQ(push.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // Pull without a token.
  const auto pull = rpc_test::Pull(*stub_, server_->trainer()->layout(), rpc_test::PullOf(0, 0));
  EXPECT_EQ(pull.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Reason(pull.status), v1::ERROR_REASON_UNAUTHENTICATED);
  EXPECT_EQ(pull.messages, 0);
  EXPECT_EQ(server_->trainer()->GetStatus().window().contributions_received(), 0u);
}

TEST(DataPlaneServiceShardsTest, CallsGoToTheShardTheirMetadataNames) {
  int port = 0;
  auto server = rpc_test::StartTwoShards(SmallJob(1, 10), &port);
  ASSERT_NE(server, nullptr);
  auto stub = v1::DataPlane::NewStub(rpc_test::Connect(port));
  // Two shards on one address: a call must name one.
  const grpc::Status unnamed = rpc_test::Join(*stub, 0);
  EXPECT_EQ(Reason(unnamed), v1::ERROR_REASON_WRONG_SHARD) << unnamed.error_message();
  for (uint32_t shard = 0; shard < 2; ++shard) {
    grpc::ClientContext ctx;
    rpc_test::Prepare(&ctx, absl::Seconds(20), "", static_cast<int>(shard));
    v1::JoinRequest request;
    v1::JoinResponse response;
    const grpc::Status s = stub->Join(&ctx, request, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(response.shard(), shard);
    EXPECT_EQ(response.num_shards(), 2u);
    EXPECT_EQ(response.shard_begin(), shard == 0 ? 0u : 407u);
    EXPECT_EQ(response.shard_end(), shard == 0 ? 407u : 418u);
  }
}

}  // namespace
}  // namespace gradacc
