// CallGroup: pulls of one version made together (real parked pulls on an
// in-process GradaccServer); the first failure cancels the others, later
// calls are not started, and a call removed from the group is left alone.
#include "worker/client/call_group.h"

#include <grpcpp/grpcpp.h>

#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"

namespace gradacc {
namespace {

using trainer_fixtures::SmallJob;

class CallGroupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = rpc_test::StartServer(SmallJob(1, 10));
    ASSERT_NE(server_, nullptr);
    stub_ = v1::DataPlane::NewStub(rpc_test::Connect(server_->port()));
    ASSERT_TRUE(rpc_test::Join(*stub_, 0).ok());
  }
  // A pull of version 1, parked (nobody pushes) until `timeout` or until
  // cancelled; registered in `group` while it runs.
  grpc::Status ParkedPull(CallGroup& group, grpc::ClientContext& ctx, absl::Duration timeout) {
    rpc_test::Prepare(&ctx, timeout);
    if (!group.Add(&ctx)) return grpc::Status(grpc::StatusCode::ABORTED, "not started: the group failed");
    auto reader = stub_->Pull(&ctx, rpc_test::PullOf(0, 1));
    v1::PullResponse message;
    while (reader->Read(&message)) {
    }
    const grpc::Status s = reader->Finish();
    group.Remove(&ctx);
    return s;
  }

  std::unique_ptr<GradaccServer> server_;
  std::unique_ptr<v1::DataPlane::Stub> stub_;
};

TEST_F(CallGroupTest, FailCancelsEveryCallInTheGroup) {
  CallGroup group;
  std::vector<grpc::Status> results(3);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  for (int i = 0; i < 3; ++i) contexts.push_back(std::make_unique<grpc::ClientContext>());
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] { results[i] = ParkedPull(group, *contexts[i], absl::Seconds(20)); });
  }
  absl::SleepFor(absl::Milliseconds(300));  // the pulls are parked
  const absl::Time start = absl::Now();
  group.Fail();
  for (auto& t : threads) t.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));  // long before their deadline
  for (const grpc::Status& s : results) EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(CallGroupTest, CallsAfterAFailureAreNotStarted) {
  CallGroup group;
  group.Fail();
  grpc::ClientContext ctx;
  EXPECT_FALSE(group.Add(&ctx));
  EXPECT_EQ(ParkedPull(group, ctx, absl::Seconds(5)).error_code(), grpc::StatusCode::ABORTED);
}

TEST_F(CallGroupTest, CallRemovedFromTheGroupIsNotCancelled) {
  CallGroup group;
  grpc::ClientContext removed;
  ASSERT_TRUE(group.Add(&removed));
  group.Remove(&removed);
  grpc::Status result;
  std::thread t([&] {
    rpc_test::Prepare(&removed, absl::Milliseconds(500));
    auto reader = stub_->Pull(&removed, rpc_test::PullOf(0, 1));
    v1::PullResponse message;
    while (reader->Read(&message)) {
    }
    result = reader->Finish();
  });
  absl::SleepFor(absl::Milliseconds(100));
  group.Fail();
  t.join();
  // It ran to its own deadline.
  EXPECT_EQ(result.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(CallGroupTest, CallsThatSucceededAreUnaffectedByALaterFailure) {
  CallGroup group;
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  ASSERT_TRUE(group.Add(&ctx));
  auto reader = stub_->Pull(&ctx, rpc_test::PullOf(0, 0));  // version 0 exists: answered at once
  v1::PullResponse message;
  int messages = 0;
  while (reader->Read(&message)) ++messages;
  const grpc::Status s = reader->Finish();
  group.Remove(&ctx);
  group.Fail();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(messages, 1);
}

}  // namespace
}  // namespace gradacc
