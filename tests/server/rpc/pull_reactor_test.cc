// PullReactor over real gRPC: pulls of a GradaccServer's versions (at once,
// parked until published, refused, bounded), with the generated stub.
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"

namespace gradacc {
namespace {

using rpc_test::PullOf;
using rpc_test::Reason;
using testing::Contribution;
using trainer_fixtures::SmallJob;

class PullReactorTest : public ::testing::Test {
 protected:
  void StartJob(uint32_t workers, ServerOptions options = {}) {
    ServerOptions o = options;
    o.trainer.pull_chunk_elements = 100;  // several chunks per version
    server_ = rpc_test::StartServer(SmallJob(workers, 10), o);
    ASSERT_NE(server_, nullptr);
    stub_ = v1::DataPlane::NewStub(rpc_test::Connect(server_->port()));
    for (uint32_t w = 0; w < workers; ++w) ASSERT_TRUE(rpc_test::Join(*stub_, w).ok());
  }
  const ModelLayout& layout() { return server_->trainer()->layout(); }
  void PushWindow(uint32_t worker, uint64_t window) {
    Contribution c;
    c.worker = worker;
    c.window = window;
    c.key = window;
    c.grad = rpc_test::Ramp(layout().num_elements(), 0.25f);
    const auto out = rpc_test::PushContribution(*stub_, layout(), c);
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  }

  std::unique_ptr<GradaccServer> server_;
  std::unique_ptr<v1::DataPlane::Stub> stub_;
};

TEST_F(PullReactorTest, PullOfThePublishedVersionStreamsHeaderThenEveryParameter) {
  StartJob(1);
  const auto out = rpc_test::Pull(*stub_, layout(), PullOf(0, 0));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.header.version(), 0u);
  EXPECT_EQ(out.header.num_elements(), layout().num_elements());
  EXPECT_FALSE(out.header.shared_memory());
  // 418 elements in chunks of at most 100, per tensor: w (407) in 5, b (11) in 1.
  EXPECT_EQ(out.messages, 1 + 5 + 1);
  EXPECT_TRUE(testing::BitIdentical(out.params, server_->trainer()->Parameters()));
  // The parameter bytes sent are counted.
  EXPECT_EQ(server_->trainer()->Counters().bytes_sent, layout().num_elements() * sizeof(float));
}

TEST_F(PullReactorTest, PullOfAFutureVersionIsParkedUntilItIsPublished) {
  StartJob(1);
  rpc_test::PullOutcome parked;
  std::atomic<bool> answered{false};
  std::thread puller([&] {
    parked = rpc_test::Pull(*stub_, layout(), PullOf(0, 1));
    answered = true;
  });
  // Version 1 needs the window closed: the pull waits for it.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(answered.load());
  PushWindow(0, 0);
  puller.join();
  ASSERT_TRUE(parked.status.ok()) << parked.status.error_message();
  EXPECT_EQ(parked.header.version(), 1u);
  EXPECT_TRUE(testing::BitIdentical(parked.params, server_->trainer()->Parameters()));
}

TEST_F(PullReactorTest, PullOfAnotherJobIsRefusedAtOnce) {
  StartJob(1);
  v1::PullRequest request = PullOf(0, 0);
  request.set_job_id("another-job");
  const auto out = rpc_test::Pull(*stub_, layout(), request);
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Reason(out.status), v1::ERROR_REASON_UNKNOWN_JOB) << out.status.error_message();
  EXPECT_EQ(out.messages, 0);
}

TEST_F(PullReactorTest, ParkedPullNamingAContributionTheServerLacksFailsAtOnce) {
  StartJob(1);
  v1::PullRequest request = PullOf(0, 1);
  request.set_contribution_key(0);  // never pushed to this server
  const auto out = rpc_test::Pull(*stub_, layout(), request, absl::Seconds(10));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Reason(out.status), v1::ERROR_REASON_CONTRIBUTION_LOST) << out.status.error_message();
}

TEST_F(PullReactorTest, ParkedPullEndsWithPullTimeoutAtTheServersBound) {
  ServerOptions options;
  options.trainer.max_pull_wait = absl::Milliseconds(200);
  StartJob(1, options);
  const absl::Time start = absl::Now();
  const auto out = rpc_test::Pull(*stub_, layout(), PullOf(0, 1), absl::Seconds(20));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(Reason(out.status), v1::ERROR_REASON_PULL_TIMEOUT) << out.status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
}

TEST_F(PullReactorTest, PullCancelledByTheClientLeavesTheServerServing) {
  StartJob(1);
  // The client's own deadline ends the parked pull (OnCancel drops the wait).
  const auto cancelled = rpc_test::Pull(*stub_, layout(), PullOf(0, 1), absl::Milliseconds(200));
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  PushWindow(0, 0);
  const auto out = rpc_test::Pull(*stub_, layout(), PullOf(0, 1));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.header.version(), 1u);
}

}  // namespace
}  // namespace gradacc
