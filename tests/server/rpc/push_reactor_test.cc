// PushReactor over real gRPC: a push stream to a GradaccServer on a port the
// OS chose, written with the generated stub.
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"

namespace gradacc {
namespace {

using rpc_test::ChunkRequests;
using rpc_test::HeaderRequest;
using rpc_test::PushContribution;
using rpc_test::PushMessages;
using rpc_test::Reason;
using testing::Contribution;
using trainer_fixtures::SmallJob;

class PushReactorTest : public ::testing::Test {
 protected:
  void StartJob(uint32_t workers, ServerOptions options = {}) {
    server_ = rpc_test::StartServer(SmallJob(workers, 10), options);
    ASSERT_NE(server_, nullptr);
    stub_ = v1::DataPlane::NewStub(rpc_test::Connect(server_->port()));
    for (uint32_t w = 0; w < workers; ++w) ASSERT_TRUE(rpc_test::Join(*stub_, w).ok());
  }
  const ModelLayout& layout() { return server_->trainer()->layout(); }
  Contribution Make(uint32_t worker, uint64_t window, float scale) {
    Contribution c;
    c.worker = worker;
    c.window = window;
    c.key = window;
    c.samples = 2;
    c.grad = rpc_test::Ramp(layout().num_elements(), scale);
    return c;
  }

  std::unique_ptr<GradaccServer> server_;
  std::unique_ptr<v1::DataPlane::Stub> stub_;
};

TEST_F(PushReactorTest, PushThatClosesTheWindowIsAnsweredOnceTheVersionIsPublished) {
  StartJob(1);
  const auto out = PushContribution(*stub_, layout(), Make(0, 0, 0.5f));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.response.window(), 0u);
  EXPECT_TRUE(out.response.closed_window());
  EXPECT_TRUE(out.response.version_published());
  EXPECT_EQ(out.response.contributions_received(), 1u);
  EXPECT_EQ(out.response.contributions_expected(), 1u);
  // Published before the answer: nothing to wait for.
  EXPECT_EQ(server_->trainer()->version(), 1u);
}

TEST_F(PushReactorTest, PushThatDoesNotCloseTheWindowIsAnsweredAtOnce) {
  StartJob(2);
  const auto out = PushContribution(*stub_, layout(), Make(1, 0, 1.0f));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_FALSE(out.response.closed_window());
  EXPECT_FALSE(out.response.version_published());
  EXPECT_EQ(out.response.contributions_received(), 1u);
  EXPECT_EQ(out.response.contributions_expected(), 2u);
  EXPECT_EQ(server_->trainer()->version(), 0u);
}

TEST_F(PushReactorTest, SameKeyPushedAgainIsAcknowledgedAsDuplicateAndNotCounted) {
  StartJob(2);
  const Contribution c = Make(0, 0, 1.0f);
  ASSERT_TRUE(PushContribution(*stub_, layout(), c).status.ok());
  const auto again = PushContribution(*stub_, layout(), c);
  EXPECT_EQ(again.status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Reason(again.status), v1::ERROR_REASON_DUPLICATE);
  EXPECT_EQ(server_->trainer()->GetStatus().window().contributions_received(), 1u);
}

TEST_F(PushReactorTest, ChunkBeforeTheHeaderIsAProtocolError) {
  StartJob(1);
  const auto out = PushMessages(*stub_, ChunkRequests(layout(), Make(0, 0, 1.0f).grad));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reason(out.status), v1::ERROR_REASON_PROTOCOL) << out.status.error_message();
  EXPECT_EQ(server_->trainer()->version(), 0u);
}

TEST_F(PushReactorTest, StreamEndingBeforeEveryElementIsRefusedAndNothingCounted) {
  StartJob(1);
  const Contribution c = Make(0, 0, 1.0f);
  std::vector<v1::PushRequest> messages = {HeaderRequest(testing::HeaderOf(c, layout().num_elements()))};
  std::vector<v1::PushRequest> chunks = ChunkRequests(layout(), c.grad);
  messages.insert(messages.end(), chunks.begin(), chunks.end() - 1);  // the last chunk is missing
  const auto out = PushMessages(*stub_, messages);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reason(out.status), v1::ERROR_REASON_MISSING_CHUNKS) << out.status.error_message();
  EXPECT_EQ(server_->trainer()->GetStatus().window().contributions_received(), 0u);
  // The worker may push the window again, whole this time.
  const auto retry = PushContribution(*stub_, layout(), c);
  EXPECT_TRUE(retry.status.ok()) << retry.status.error_message();
  EXPECT_TRUE(retry.response.closed_window());
}

TEST_F(PushReactorTest, StreamThatOutlivesThePushTimeoutIsRefusedWithItsReasonAndNothingCounted) {
  ServerOptions options;
  options.trainer.push_timeout = absl::Milliseconds(200);
  StartJob(1, options);
  const Contribution c = Make(0, 0, 1.0f);
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, absl::Seconds(20));
  v1::PushResponse response;
  auto writer = stub_->Push(&ctx, &response);
  ASSERT_TRUE(writer->Write(HeaderRequest(testing::HeaderOf(c, layout().num_elements()))));
  // No chunk, no half-close: the server gives up after its push timeout
  // (long before the call's own deadline).
  const absl::Time start = absl::Now();
  const grpc::Status status = writer->Finish();
  // The server finishes the call with its refusal: CANCELLED, PUSH_TIMEOUT.
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  EXPECT_EQ(Reason(status), v1::ERROR_REASON_PUSH_TIMEOUT) << status.error_message();
  EXPECT_NE(status.error_message().find("push timeout"), std::string::npos) << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  // The server counts it as refused, by its reason.
  const std::string label = ReasonLabel(v1::ERROR_REASON_PUSH_TIMEOUT);
  for (int i = 0; i < 1000 && server_->trainer()->Counters().rejected_by_reason[label] == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(server_->trainer()->Counters().rejected_by_reason[label], 1u);
  EXPECT_EQ(server_->trainer()->GetStatus().window().contributions_received(), 0u);
  EXPECT_EQ(server_->trainer()->version(), 0u);
}

TEST_F(PushReactorTest, StreamWithoutAHeaderPastThePushTimeoutIsRefusedAndCounted) {
  ServerOptions options;
  options.trainer.push_timeout = absl::Milliseconds(200);
  StartJob(1, options);
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, absl::Seconds(20));
  v1::PushResponse response;
  auto writer = stub_->Push(&ctx, &response);  // opens the stream, sends nothing
  const grpc::Status status = writer->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  EXPECT_EQ(Reason(status), v1::ERROR_REASON_PUSH_TIMEOUT) << status.error_message();
  const std::string label = ReasonLabel(v1::ERROR_REASON_PUSH_TIMEOUT);
  for (int i = 0; i < 1000 && server_->trainer()->Counters().rejected_by_reason[label] == 0; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(server_->trainer()->Counters().rejected_by_reason[label], 1u) << "counted once, with no worker";
  EXPECT_EQ(server_->trainer()->GetStatus().contributions_rejected(), 1u);
}

}  // namespace
}  // namespace gradacc
