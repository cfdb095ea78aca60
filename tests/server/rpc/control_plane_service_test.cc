// ControlPlaneServiceImpl over real gRPC on a GradaccServer: the step
// ledger, metric reports, GetNormPartial on an unsharded server, the token
// each call needs, and shard routing.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"

namespace gradacc {
namespace {

using rpc_test::Reason;
using trainer_fixtures::SmallJob;

class ControlPlaneServiceTest : public ::testing::Test {
 protected:
  void Start(TokenSet tokens = {}) {
    ServerOptions options;
    options.tokens = tokens;
    server_ = rpc_test::StartServer(SmallJob(1, 10), options);
    ASSERT_NE(server_, nullptr);
    control_ = v1::ControlPlane::NewStub(rpc_test::Connect(server_->port()));
    data_ = v1::DataPlane::NewStub(rpc_test::Connect(server_->port()));
  }
  void PushWindow(uint64_t window) {
    testing::Contribution c;
    c.window = window;
    c.key = window;
    c.samples = 4;
    c.loss_sum = 2.0;
    c.grad = rpc_test::Ramp(server_->trainer()->layout().num_elements(), 0.1f);
    const auto out = rpc_test::PushContribution(*data_, server_->trainer()->layout(), c);
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  }
  grpc::Status Status(const std::string& token, bool local = false, int shard = -1) {
    grpc::ClientContext ctx;
    rpc_test::Prepare(&ctx, absl::Seconds(20), token, shard);
    if (local) ctx.AddMetadata("x-gradacc-local", "1");
    v1::Status response;
    return control_->GetStatus(&ctx, v1::GetStatusRequest(), &response);
  }

  std::unique_ptr<GradaccServer> server_;
  std::unique_ptr<v1::ControlPlane::Stub> control_;
  std::unique_ptr<v1::DataPlane::Stub> data_;
};

TEST_F(ControlPlaneServiceTest, GetStepsReturnsTheLedgersRecordsInTheRangeAsked) {
  Start();
  ASSERT_TRUE(rpc_test::Join(*data_, 0).ok());
  for (uint64_t w = 0; w < 3; ++w) PushWindow(w);
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  v1::GetStepsRequest request;
  request.set_from_step(2);
  request.set_to_step(3);
  v1::GetStepsResponse response;
  ASSERT_TRUE(control_->GetSteps(&ctx, request, &response).ok());
  ASSERT_EQ(response.steps_size(), 2);
  EXPECT_EQ(response.steps(0).step(), 2u);
  EXPECT_EQ(response.steps(0).window(), 1u);
  EXPECT_EQ(response.steps(1).step(), 3u);
  EXPECT_EQ(response.steps(1).samples(), 4u);
  EXPECT_DOUBLE_EQ(response.steps(1).loss(), 0.5);
}

TEST_F(ControlPlaneServiceTest, ReportedMetricShowsInStatusAndNeedsAWorkerToken) {
  Start(rpc_test::AllTokens());
  ASSERT_TRUE(rpc_test::Join(*data_, 0, nullptr, "worker-secret").ok());
  v1::ReportMetricRequest request;
  request.set_worker(0);
  request.set_step(0);
  request.set_test_accuracy(0.75);
  {
    grpc::ClientContext ctx;
    rpc_test::Prepare(&ctx, absl::Seconds(20), "reader-secret");
    v1::ReportMetricResponse response;
    const grpc::Status s = control_->ReportMetric(&ctx, request, &response);
    EXPECT_EQ(Reason(s), v1::ERROR_REASON_PERMISSION_DENIED) << s.error_message();
  }
  EXPECT_EQ(server_->trainer()->GetStatus().accuracy_history_size(), 0);
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, absl::Seconds(20), "worker-secret");
  v1::ReportMetricResponse response;
  const grpc::Status s = control_->ReportMetric(&ctx, request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  const v1::Status status = server_->trainer()->GetStatus();
  ASSERT_EQ(status.accuracy_history_size(), 1);
  EXPECT_DOUBLE_EQ(status.accuracy_history(0).test_accuracy(), 0.75);
}

TEST_F(ControlPlaneServiceTest, OutOfRangeMetricIsRefusedAsBadValue) {
  Start();
  ASSERT_TRUE(rpc_test::Join(*data_, 0).ok());
  v1::ReportMetricRequest request;
  request.set_test_accuracy(1.5);
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  v1::ReportMetricResponse response;
  const grpc::Status s = control_->ReportMetric(&ctx, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reason(s), v1::ERROR_REASON_BAD_VALUE) << s.error_message();
}

TEST_F(ControlPlaneServiceTest, GetNormPartialOnAnUnshardedServerIsUnsupported) {
  Start();
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  v1::GetNormPartialRequest request;
  v1::GetNormPartialResponse response;
  const grpc::Status s = control_->GetNormPartial(&ctx, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Reason(s), v1::ERROR_REASON_UNSUPPORTED) << s.error_message();
}

TEST_F(ControlPlaneServiceTest, ShardTokenReadsStatusOnlyAsAPeerAskingForThisShardsOwn) {
  Start(rpc_test::AllTokens());
  EXPECT_TRUE(Status("reader-secret").ok());
  EXPECT_TRUE(Status("worker-secret").ok());
  EXPECT_EQ(Reason(Status("shard-secret")), v1::ERROR_REASON_PERMISSION_DENIED);
  EXPECT_TRUE(Status("shard-secret", /*local=*/true).ok());
  EXPECT_EQ(Reason(Status("")), v1::ERROR_REASON_UNAUTHENTICATED);
}

TEST_F(ControlPlaneServiceTest, StatusNamingAShardNotServedHereIsWrongShard) {
  Start();
  EXPECT_TRUE(Status("", false, 0).ok());
  const grpc::Status s = Status("", false, 3);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reason(s), v1::ERROR_REASON_WRONG_SHARD) << s.error_message();
}

}  // namespace
}  // namespace gradacc
