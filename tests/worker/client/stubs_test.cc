// GradaccStubs and PrepareCall against a real in-process GradaccServer: the
// raw (ByteBuffer) Push and Pull carry the same wire as the generated
// stubs, and PrepareCall's token and deadline reach the call.
#include "worker/client/stubs.h"

#include <cstring>
#include <memory>
#include <vector>

#include "common/errors.h"
#include "common/grpc_status.h"
#include "common/wire.h"
#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"

namespace gradacc {
namespace {

using trainer_fixtures::SmallJob;

class StubsTest : public ::testing::Test {
 protected:
  void Start(ServerOptions options = {}) {
    server_ = rpc_test::StartServer(SmallJob(1, 10), options);
    ASSERT_NE(server_, nullptr);
    stubs_ = std::make_unique<GradaccStubs>(rpc_test::Connect(server_->port()));
  }
  absl::Time Soon() { return absl::Now() + absl::Seconds(20); }

  std::unique_ptr<GradaccServer> server_;
  std::unique_ptr<GradaccStubs> stubs_;
};

TEST_F(StubsTest, RawPullReadsTheSameMessagesAsTheGeneratedStub) {
  Start();
  ASSERT_TRUE(rpc_test::Join(*stubs_->data, 0).ok());
  grpc::ClientContext ctx;
  PrepareCall(ctx, "", Soon(), false);
  auto reader = stubs_->RawPull(&ctx, rpc_test::PullOf(0, 0));
  grpc::ByteBuffer raw;
  std::vector<v1::PullResponse> messages;
  while (reader->Read(&raw)) {
    v1::PullResponse m;
    ASSERT_TRUE(ParseMessage(raw, &m));
    messages.push_back(std::move(m));
  }
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_GE(messages.size(), 2u);
  EXPECT_TRUE(messages[0].has_header());
  EXPECT_EQ(messages[0].header().num_elements(), 418u);
  const std::vector<float> params = server_->trainer()->Parameters();
  const v1::GradientChunk& first = messages[1].chunk();
  ASSERT_EQ(first.tensor(), 0u);
  ASSERT_EQ(first.offset(), 0u);
  EXPECT_EQ(std::memcmp(first.data().data(), params.data(), first.data().size()), 0);
}

TEST_F(StubsTest, RawPushIsAcceptedAndAnsweredWithASerialisedPushResponse) {
  Start();
  ASSERT_TRUE(rpc_test::Join(*stubs_->data, 0).ok());
  testing::Contribution c;
  c.grad = rpc_test::Ramp(418, 0.5f);
  grpc::ClientContext ctx;
  PrepareCall(ctx, "", Soon(), false);
  grpc::ByteBuffer response;
  auto writer = stubs_->RawPush(&ctx, &response);
  ASSERT_TRUE(writer->Write(SerializeMessage(rpc_test::HeaderRequest(testing::HeaderOf(c, 418)))));
  const ModelLayout& layout = server_->trainer()->layout();
  for (uint32_t t = 0; t < layout.tensors().size(); ++t) {
    const auto& tensor = layout.tensors()[t];
    ASSERT_TRUE(writer->Write(
        ChunkMessage(t, 0, reinterpret_cast<const char*>(c.grad.data() + tensor.offset), tensor.size * sizeof(float))));
  }
  writer->WritesDone();
  const grpc::Status s = writer->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  v1::PushResponse parsed;
  ASSERT_TRUE(ParseMessage(response, &parsed));
  EXPECT_TRUE(parsed.closed_window());
  EXPECT_EQ(server_->trainer()->version(), 1u);
}

TEST_F(StubsTest, PrepareCallSendsTheTokenAndTheDeadline) {
  ServerOptions options;
  options.tokens.worker = "worker-secret";
  Start(options);
  v1::GetStatusRequest request;
  v1::Status status;
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, "worker-secret", Soon(), false);
    EXPECT_TRUE(stubs_->control->GetStatus(&ctx, request, &status).ok());
    EXPECT_EQ(status.job_id(), "unit");
  }
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, "", Soon(), false);
    const grpc::Status s = stubs_->control->GetStatus(&ctx, request, &status);
    EXPECT_EQ(ReasonOf(FromGrpcStatus(s)), v1::ERROR_REASON_UNAUTHENTICATED);
  }
  {
    // A parked pull ends at the deadline PrepareCall set.
    grpc::ClientContext ctx;
    PrepareCall(ctx, "worker-secret", absl::Now() + absl::Milliseconds(200), false);
    auto reader = stubs_->data->Pull(&ctx, rpc_test::PullOf(0, 5));
    v1::PullResponse m;
    while (reader->Read(&m)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
}

TEST_F(StubsTest, WaitForReadyWaitsForAServerThatIsNotThereYet) {
  // Nothing listens any more: without wait_for_ready the call fails at
  // once, with it the call waits to its deadline.
  Start();
  const int port = server_->port();
  server_.reset();  // the port is free again
  GradaccStubs stubs(rpc_test::Connect(port));
  v1::Status status;
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, "", absl::Now() + absl::Seconds(5), false);
    EXPECT_EQ(stubs.control->GetStatus(&ctx, v1::GetStatusRequest(), &status).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }
  {
    grpc::ClientContext ctx;
    PrepareCall(ctx, "", absl::Now() + absl::Milliseconds(300), true);
    EXPECT_EQ(stubs.control->GetStatus(&ctx, v1::GetStatusRequest(), &status).error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
}

}  // namespace
}  // namespace gradacc
