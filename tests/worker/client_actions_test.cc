// The client library acts on each refusal's ClientAction (common/errors.h),
// against an in-process scripted server (tests/fake_data_plane.h): what it
// calls again, with which key and version, and that every loop ends.
#include <string>

#include "absl/strings/match.h"
#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/fake_data_plane.h"
#include "common/channel.h"
#include "worker/client/client.h"

namespace gradacc {
namespace {

using Call = testing::FakeDataPlane::Call;
using testing::FakeDataPlane;

ClientOptions OptionsFor(const FakeDataPlane& fake) {
  ClientOptions options;
  options.server = fake.address();
  options.worker = 0;
  options.connect_timeout = absl::Seconds(30);
  options.rpc_timeout = absl::Seconds(30);
  options.window_timeout = absl::Seconds(60);
  // Backoffs are real sleeps: keep them short.
  options.retry.initial_backoff = absl::Milliseconds(1);
  options.retry.max_backoff = absl::Milliseconds(4);
  options.max_recoveries = 5;
  return options;
}

absl::Status Refused(v1::ErrorReason reason) { return Refusal(reason, "scripted refusal"); }

class ClientActionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fake_ = FakeDataPlane::Start();
    ASSERT_NE(fake_, nullptr);
    auto client = Client::Connect(OptionsFor(*fake_));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    ASSERT_EQ(fake_->calls(Call::kJoin), 1);
  }

  // One micro-batch of gradient 1 into every element, then Step.
  absl::StatusOr<StepResult> ComputeAndStep() {
    for (float& g : client_->grad()) g += 1;
    client_->AddMicroBatch(2, 1.0);
    return client_->Step();
  }

  std::unique_ptr<FakeDataPlane> fake_;
  std::unique_ptr<Client> client_;
};

TEST_F(ClientActionsTest, StepWithoutMicroBatchesIsNothingToPushAndCallsNothing) {
  auto step = client_->Step();
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(ReasonOf(step.status()), v1::ERROR_REASON_NOTHING_TO_PUSH) << step.status();
  EXPECT_EQ(ActionOf(step.status()), v1::CLIENT_ACTION_FIX_REQUEST);
  EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(fake_->calls(Call::kPush), 0);
  EXPECT_EQ(fake_->calls(Call::kJoin), 1) << "it rejoined instead of returning";
  EXPECT_EQ(client_->version(), 0u);
}

TEST_F(ClientActionsTest, FixRequestAndStopAreReturnedAtOnce) {
  for (v1::ErrorReason reason :
       {v1::ERROR_REASON_MANIFEST, v1::ERROR_REASON_JOB_DONE, v1::ERROR_REASON_PERMISSION_DENIED}) {
    SCOPED_TRACE(v1::ErrorReason_Name(reason));
    const int pushes = fake_->calls(Call::kPush);
    fake_->Script(Call::kPush, {Refused(reason)});
    auto step = ComputeAndStep();
    ASSERT_FALSE(step.ok());
    EXPECT_EQ(ReasonOf(step.status()), reason) << step.status();
    EXPECT_EQ(fake_->calls(Call::kPush), pushes + 1);
    EXPECT_EQ(fake_->calls(Call::kJoin), 1);
  }
}

TEST_F(ClientActionsTest, RetryPushesAgainWithTheSameKey) {
  fake_->Script(Call::kPush, {Refused(v1::ERROR_REASON_OVERLOADED), Refused(v1::ERROR_REASON_SHUTTING_DOWN)});
  auto step = ComputeAndStep();
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->push_attempts, 3);
  EXPECT_EQ(step->version, 1u);
  ASSERT_EQ(fake_->accepted_pushes().size(), 1u);
  EXPECT_EQ(fake_->accepted_pushes()[0].contribution_key(), 0u);
  EXPECT_EQ(fake_->accepted_pushes()[0].attempt(), 3u);
  EXPECT_EQ(fake_->calls(Call::kJoin), 1);
}

TEST_F(ClientActionsTest, RejoinSendsTheHeldVersionThenPushes) {
  ASSERT_TRUE(ComputeAndStep().ok());
  fake_->Script(Call::kPush, {Refused(v1::ERROR_REASON_NOT_JOINED)});
  auto step = ComputeAndStep();
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->reconnects, 1);
  EXPECT_EQ(step->version, 2u);
  const auto joins = fake_->joins();
  ASSERT_EQ(joins.size(), 2u);
  EXPECT_EQ(joins[0].held_version(), 0u);
  EXPECT_EQ(joins[1].held_version(), 1u);
  ASSERT_EQ(fake_->accepted_pushes().size(), 2u);
  EXPECT_EQ(fake_->accepted_pushes()[1].contribution_key(), 1u);
}

TEST_F(ClientActionsTest, ContributionLostIsPushedAgainWithTheSameKey) {
  fake_->LoseNextContribution();
  auto step = ComputeAndStep();
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_FALSE(step->stale);
  EXPECT_EQ(step->version, 1u);
  const auto pushes = fake_->accepted_pushes();
  ASSERT_EQ(pushes.size(), 2u);
  EXPECT_EQ(pushes[0].contribution_key(), 0u);
  EXPECT_EQ(pushes[1].contribution_key(), 0u);
  EXPECT_EQ(pushes[1].window(), 0u);
  EXPECT_GT(pushes[1].attempt(), pushes[0].attempt());
}

TEST_F(ClientActionsTest, AStalePushPullsTheNextVersion) {
  fake_->set_version(1);  // the window closed without this worker
  auto step = ComputeAndStep();
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->stale);
  EXPECT_EQ(step->version, 1u);
  EXPECT_TRUE(fake_->accepted_pushes().empty());
  EXPECT_EQ(client_->params()[0], 1.0f);
  EXPECT_EQ(client_->pending_micro_batches(), 0u) << "the gradient buffer was not reset";
}

TEST_F(ClientActionsTest, AServerBehindTheWorkerStopsIt) {
  ASSERT_TRUE(ComputeAndStep().ok());
  ASSERT_TRUE(ComputeAndStep().ok());
  fake_->set_version(0);  // restarted with less than it published
  fake_->Script(Call::kPush, {Refused(v1::ERROR_REASON_NOT_JOINED)});
  auto step = ComputeAndStep();
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(ReasonOf(step.status()), v1::ERROR_REASON_SERVER_BEHIND) << step.status();
  EXPECT_EQ(step.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ActionOf(step.status()), v1::CLIENT_ACTION_STOP);
  // It names what it knows, and tells nobody to set a flag (it may be set).
  EXPECT_TRUE(absl::StrContains(step.status().message(), "version 0")) << step.status();
  EXPECT_FALSE(absl::StrContains(step.status().message(), "--")) << step.status();
  EXPECT_EQ(fake_->joins().back().held_version(), 2u);
}

TEST_F(ClientActionsTest, RecoveriesAreBounded) {
  fake_->Always(Call::kPush, Refused(v1::ERROR_REASON_NOT_JOINED));
  auto step = ComputeAndStep();
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(ReasonOf(step.status()), v1::ERROR_REASON_NOT_JOINED) << step.status();
  EXPECT_TRUE(absl::StrContains(step.status().message(), "did not close")) << step.status();
  // One push a round, one rejoin before every round but the first.
  const int rounds = OptionsFor(*fake_).max_recoveries + 1;
  EXPECT_EQ(fake_->calls(Call::kPush), rounds);
  EXPECT_EQ(fake_->calls(Call::kJoin), rounds);
}

TEST_F(ClientActionsTest, PushRetriesAreBoundedByAttempts) {
  fake_->Always(Call::kPush, Refused(v1::ERROR_REASON_OVERLOADED));
  client_->AddMicroBatch(1, 0.5);
  auto pushed = client_->Push();
  ASSERT_FALSE(pushed.ok());
  EXPECT_EQ(ReasonOf(pushed.status()), v1::ERROR_REASON_OVERLOADED);
  EXPECT_EQ(fake_->calls(Call::kPush), OptionsFor(*fake_).retry.max_attempts);
  EXPECT_TRUE(absl::StrContains(pushed.status().message(), "gave up after 6 attempts")) << pushed.status();
}

TEST_F(ClientActionsTest, ADuplicateIsAcknowledged) {
  fake_->Script(Call::kPush, {Refused(v1::ERROR_REASON_DUPLICATE)});
  client_->AddMicroBatch(1, 0.5);
  bool duplicate = false;
  auto pushed = client_->Push(&duplicate);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_TRUE(duplicate);
  EXPECT_EQ(fake_->calls(Call::kPush), 1);
}

TEST_F(ClientActionsTest, LeaveRetriesOnlyRetryableRefusals) {
  fake_->Script(Call::kLeave, {Refused(v1::ERROR_REASON_SHUTTING_DOWN)});
  EXPECT_TRUE(client_->Leave().ok());
  EXPECT_EQ(fake_->calls(Call::kLeave), 2);
  fake_->Script(Call::kLeave, {Refused(v1::ERROR_REASON_UNKNOWN_JOB)});
  EXPECT_EQ(ReasonOf(client_->Leave()), v1::ERROR_REASON_UNKNOWN_JOB);
  EXPECT_EQ(fake_->calls(Call::kLeave), 3);
}

TEST(ClientChannelTest, UnaryCallsHaveGrpcsRetryPolicy) {
  auto fake = FakeDataPlane::Start();
  ASSERT_NE(fake, nullptr);
  ConnectionOptions options;
  options.server = fake->address();
  auto channel = MakeChannel(options);
  ASSERT_TRUE(channel.ok()) << channel.status();
  ASSERT_TRUE((*channel)->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30)));
  const std::string config = (*channel)->GetServiceConfigJSON();
  EXPECT_TRUE(absl::StrContains(config, "retryPolicy")) << config;
  for (const char* method : {"\"Join\"", "\"Leave\"", "\"AttachSharedMemory\"", "\"GetStatus\"", "\"ReportMetric\""}) {
    EXPECT_TRUE(absl::StrContains(config, method)) << method << " in " << config;
  }
  EXPECT_FALSE(absl::StrContains(config, "\"Push\"")) << "a push stream is retried by the client, with its key";
  EXPECT_TRUE(absl::StrContains(config, "UNAVAILABLE"));
}

TEST(ClientChannelTest, ATokenThatCannotBeSentIsRefusedWithoutShowingIt) {
  auto fake = FakeDataPlane::Start();
  ASSERT_NE(fake, nullptr);
  ClientOptions options = OptionsFor(*fake);
  options.connection.token = "first-line\nsecret-second-line";
  auto client = Client::Connect(options);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(absl::StrContains(client.status().message(), "secret-second-line")) << client.status();
  EXPECT_FALSE(absl::StrContains(client.status().message(), "first-line")) << client.status();
  EXPECT_EQ(fake->calls(Call::kJoin), 0);
}

}  // namespace
}  // namespace gradacc
