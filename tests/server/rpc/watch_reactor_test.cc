// WatchReactor over real gRPC: WatchStatus streams the current status at
// once, a new one when the Trainer changes, and ends with SHUTTING_DOWN when
// the server stops.
#include <memory>

#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"

namespace gradacc {
namespace {

using rpc_test::Reason;
using trainer_fixtures::SmallJob;

class WatchReactorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = rpc_test::StartServer(SmallJob(2, 10));
    ASSERT_NE(server_, nullptr);
    data_ = v1::DataPlane::NewStub(rpc_test::Connect(server_->port()));
    control_ = v1::ControlPlane::NewStub(rpc_test::Connect(server_->port()));
  }

  std::unique_ptr<GradaccServer> server_;
  std::unique_ptr<v1::DataPlane::Stub> data_;
  std::unique_ptr<v1::ControlPlane::Stub> control_;
};

TEST_F(WatchReactorTest, FirstMessageIsTheCurrentStatus) {
  ASSERT_TRUE(rpc_test::Join(*data_, 0).ok());
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, absl::Seconds(20));
  auto reader = control_->WatchStatus(&ctx, v1::WatchStatusRequest());
  v1::Status status;
  ASSERT_TRUE(reader->Read(&status));
  EXPECT_EQ(status.job_id(), "unit");
  EXPECT_EQ(status.step(), 0u);
  EXPECT_EQ(status.state(), v1::JOB_STATE_RUNNING);
  ctx.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(WatchReactorTest, ChangesAreStreamedAsTheyHappen) {
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, absl::Seconds(20));
  auto reader = control_->WatchStatus(&ctx, v1::WatchStatusRequest());
  v1::Status status;
  ASSERT_TRUE(reader->Read(&status));
  EXPECT_EQ(status.state(), v1::JOB_STATE_WAITING);  // nobody joined yet

  // Two workers join and push window 0: the watch sees the step applied
  // (notifications coalesce, so intermediate states may be skipped).
  for (uint32_t w = 0; w < 2; ++w) ASSERT_TRUE(rpc_test::Join(*data_, w).ok());
  for (uint32_t w = 0; w < 2; ++w) {
    testing::Contribution c;
    c.worker = w;
    c.grad = rpc_test::Ramp(server_->trainer()->layout().num_elements(), 1.0f + w);
    ASSERT_TRUE(rpc_test::PushContribution(*data_, server_->trainer()->layout(), c).status.ok());
  }
  int messages = 1;
  while (status.step() < 1 && reader->Read(&status)) ++messages;
  EXPECT_EQ(status.step(), 1u);
  EXPECT_EQ(status.state(), v1::JOB_STATE_RUNNING);
  EXPECT_GE(messages, 2);
  ctx.TryCancel();
  reader->Finish();
}

TEST_F(WatchReactorTest, ServerShutdownEndsTheWatchWithShuttingDown) {
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, absl::Seconds(20));
  auto reader = control_->WatchStatus(&ctx, v1::WatchStatusRequest());
  v1::Status status;
  ASSERT_TRUE(reader->Read(&status));
  server_->Shutdown(absl::Seconds(5));
  while (reader->Read(&status)) {
  }
  const grpc::Status end = reader->Finish();
  EXPECT_EQ(end.error_code(), grpc::StatusCode::UNAVAILABLE) << end.error_message();
  EXPECT_EQ(Reason(end), v1::ERROR_REASON_SHUTTING_DOWN) << end.error_message();
}

TEST_F(WatchReactorTest, SeveralWatchersEachGetTheStatus) {
  grpc::ClientContext a, b;
  rpc_test::Prepare(&a, absl::Seconds(20));
  rpc_test::Prepare(&b, absl::Seconds(20));
  auto ra = control_->WatchStatus(&a, v1::WatchStatusRequest());
  auto rb = control_->WatchStatus(&b, v1::WatchStatusRequest());
  v1::Status sa, sb;
  ASSERT_TRUE(ra->Read(&sa));
  ASSERT_TRUE(rb->Read(&sb));
  // One watcher leaves; the other still hears of a change.
  a.TryCancel();
  ra->Finish();
  ASSERT_TRUE(rpc_test::Join(*data_, 1).ok());
  while (sb.state() != v1::JOB_STATE_RUNNING && rb->Read(&sb)) {
  }
  EXPECT_EQ(sb.state(), v1::JOB_STATE_RUNNING);
  b.TryCancel();
  rb->Finish();
}

}  // namespace
}  // namespace gradacc
