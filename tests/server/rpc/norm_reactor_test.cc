// NormReactor over real gRPC: GetNormPartial between shards, answered at
// once when the shard has published its part of the window, parked until
// it does, and dropped when the caller gives up.
#include <atomic>
#include <memory>
#include <thread>

#include "gtest/gtest.h"
#include "tests/server/exchange_fixture.h"
#include "tests/server/rpc/rpc_test_util.h"

namespace gradacc {
namespace {

using exchange_fixture::Part;
using exchange_fixture::TwoShards;

grpc::Status GetNormPartial(TwoShards& shards, int shard, uint64_t window, v1::GetNormPartialResponse* response,
                            absl::Duration timeout = absl::Seconds(20)) {
  auto stub = v1::ControlPlane::NewStub(shards.Channel());
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx, timeout, "", shard);
  v1::GetNormPartialRequest request;
  request.set_job_id("job");
  request.set_window(window);
  return stub->GetNormPartial(&ctx, request, response);
}

TEST(NormReactorTest, PublishedPartIsAnsweredAtOnce) {
  TwoShards shards;
  shards.exchange(1).Restore(3, Part(1, {0.0f, 2.5f}));
  v1::GetNormPartialResponse response;
  const grpc::Status s = GetNormPartial(shards, 1, 3, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.shard(), 1u);
  ASSERT_EQ(response.finished_size(), 2);
  EXPECT_EQ(response.finished(0), 0.0f);
  EXPECT_EQ(response.finished(1), 2.5f);
}

TEST(NormReactorTest, CallIsParkedUntilTheShardPublishesItsPart) {
  TwoShards shards;
  std::atomic<bool> answered{false};
  grpc::Status status;
  v1::GetNormPartialResponse response;
  std::thread caller([&] {
    status = GetNormPartial(shards, 0, 4, &response);
    answered = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(answered.load());  // nothing published for window 4 yet
  shards.exchange(0).Restore(4, Part(0, {7.0f, 0.0f}, /*found_inf=*/true));
  caller.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.shard(), 0u);
  ASSERT_EQ(response.finished_size(), 2);
  EXPECT_EQ(response.finished(0), 7.0f);
  EXPECT_TRUE(response.found_inf());
}

TEST(NormReactorTest, EachShardAnswersWithItsOwnPart) {
  TwoShards shards;
  shards.exchange(0).Restore(5, Part(0, {1.0f}));
  shards.exchange(1).Restore(5, Part(1, {2.0f}));
  for (int shard = 0; shard < 2; ++shard) {
    v1::GetNormPartialResponse response;
    ASSERT_TRUE(GetNormPartial(shards, shard, 5, &response).ok());
    EXPECT_EQ(response.shard(), static_cast<uint32_t>(shard));
    ASSERT_EQ(response.finished_size(), 1);
    EXPECT_EQ(response.finished(0), 1.0f + shard);
  }
}

TEST(NormReactorTest, CallerThatGivesUpLeavesNoWaiterBehind) {
  TwoShards shards;
  v1::GetNormPartialResponse response;
  const grpc::Status s = GetNormPartial(shards, 1, 6, &response, absl::Milliseconds(200));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  // Publishing afterwards runs no callback of the finished call, and a new
  // call gets the part at once.
  shards.exchange(1).Restore(6, Part(1, {3.0f}));
  v1::GetNormPartialResponse again;
  ASSERT_TRUE(GetNormPartial(shards, 1, 6, &again).ok());
  ASSERT_EQ(again.finished_size(), 1);
  EXPECT_EQ(again.finished(0), 3.0f);
}

}  // namespace
}  // namespace gradacc
