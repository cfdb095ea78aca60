// ClientAdapter: the TrainingClient a training loop sees over a Client
// (against a real in-process GradaccServer) forwards every call to that
// Client and shows its state.
#include "worker/client/training_client.h"

#include <memory>

#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/worker/client/client_test_util.h"

namespace gradacc {
namespace {

using trainer_fixtures::SmallJob;

class TrainingClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = rpc_test::StartServer(SmallJob(1, 2));
    ASSERT_NE(server_, nullptr);
    auto client = Client::Connect(client_test::OptionsFor(client_test::Local(server_->port()), 0));
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    adapter_ = std::make_unique<ClientAdapter>(*client_);
  }

  std::unique_ptr<GradaccServer> server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<ClientAdapter> adapter_;
};

TEST_F(TrainingClientTest, ShowsTheClientsJobAndBuffers) {
  TrainingClient& tc = *adapter_;
  EXPECT_EQ(&tc.job(), &client_->job());
  EXPECT_EQ(tc.worker(), 0u);
  EXPECT_EQ(tc.version(), 0u);
  EXPECT_FALSE(tc.done());
  EXPECT_EQ(tc.loss_scale(), 0.0f);  // no loss scaling in this job
  EXPECT_EQ(tc.plan().id(), 0u);     // nor a data plan
  EXPECT_EQ(tc.params().data(), client_->params().data());
  EXPECT_EQ(tc.grad().data(), client_->grad().data());
  EXPECT_EQ(tc.transport(), client_->transport());
}

TEST_F(TrainingClientTest, WindowBookkeepingGoesToTheClient) {
  TrainingClient& tc = *adapter_;
  tc.grad()[0] = 1.0f;
  tc.AddMicroBatch(4, 2.0);
  EXPECT_EQ(client_->pending_samples(), 4u);
  ASSERT_TRUE(tc.SetUntouched({1}).ok());
  EXPECT_EQ(client_->untouched(), (std::vector<uint32_t>{1}));
  tc.Discard();
  EXPECT_EQ(client_->pending_samples(), 0u);
  EXPECT_EQ(client_->grad()[0], 0.0f);
  EXPECT_TRUE(client_->untouched().empty());
}

TEST_F(TrainingClientTest, StepsTheJobToTheEndThroughTheClient) {
  TrainingClient& tc = *adapter_;
  for (uint64_t w = 0; w < 2; ++w) {
    for (float& g : tc.grad()) g = 0.125f;
    tc.AddMicroBatch(1, 1.0);
    auto step = tc.Step();
    ASSERT_TRUE(step.ok()) << step.status();
    EXPECT_EQ(step->version, w + 1);
    EXPECT_EQ(client_->version(), w + 1);
  }
  EXPECT_TRUE(tc.done());  // total_steps 2
  EXPECT_TRUE(server_->trainer()->done());
}

TEST_F(TrainingClientTest, MetricsStatusAndLeaveReachTheServer) {
  TrainingClient& tc = *adapter_;
  ASSERT_TRUE(tc.ReportTestAccuracy(0.25, 0).ok());
  auto status = tc.GetStatus();
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->accuracy_history_size(), 1);
  EXPECT_DOUBLE_EQ(status->accuracy_history(0).test_accuracy(), 0.25);
  ASSERT_TRUE(tc.Leave().ok());
  EXPECT_EQ(server_->trainer()->GetStatus().workers(0).state(), v1::WORKER_STATE_LEFT);
}

}  // namespace
}  // namespace gradacc
