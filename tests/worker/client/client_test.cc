// Client against a real in-process GradaccServer over gRPC: Connect, Step
// (push, wait, pull, zero), several workers agreeing on the parameters, a
// sharded job, and the window's bookkeeping (Discard, SetUntouched),
// metrics and Leave.
#include "worker/client/client.h"

#include <memory>
#include <thread>
#include <vector>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/subprocess.h"
#include "tests/worker/client/client_test_util.h"

namespace gradacc {
namespace {

using client_test::Local;
using client_test::OptionsFor;
using trainer_fixtures::SmallJob;

std::vector<float> Copy(absl::Span<const float> s) { return std::vector<float>(s.begin(), s.end()); }

class ClientTest : public ::testing::Test {
 protected:
  void Start(uint32_t workers) {
    server_ = rpc_test::StartServer(SmallJob(workers, 10));
    ASSERT_NE(server_, nullptr);
  }
  std::unique_ptr<Client> Connect(uint32_t worker) {
    auto client = Client::Connect(OptionsFor(Local(server_->port()), worker));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }
  static void Compute(Client& client, float scale) {
    for (size_t i = 0; i < client.grad().size(); ++i) client.grad()[i] += scale * static_cast<float>(i % 7);
    client.AddMicroBatch(3, 1.5);
  }

  std::unique_ptr<GradaccServer> server_;
};

TEST_F(ClientTest, ConnectJoinsAndHoldsTheServersParameters) {
  Start(1);
  auto client = Connect(0);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->job().job_id(), "unit");
  EXPECT_EQ(client->version(), 0u);
  EXPECT_FALSE(client->done());
  EXPECT_EQ(client->layout().num_elements(), 418u);
  EXPECT_TRUE(testing::BitIdentical(Copy(client->params()), server_->trainer()->Parameters()));
  for (float g : client->grad()) ASSERT_EQ(g, 0.0f);
  EXPECT_EQ(client->param(1).size(), 11u);  // tensor b
  EXPECT_EQ(client->transport(), "gRPC (shared memory off in this worker)");
  EXPECT_EQ(server_->trainer()->GetStatus().workers(0).state(), v1::WORKER_STATE_JOINED);
}

TEST_F(ClientTest, StepPushesWaitsPullsTheNewVersionAndZeroesTheGradient) {
  Start(1);
  auto client = Connect(0);
  ASSERT_NE(client, nullptr);
  Compute(*client, 0.5f);
  EXPECT_EQ(client->pending_samples(), 3u);
  EXPECT_EQ(client->pending_micro_batches(), 1u);
  auto step = client->Step();
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->window, 0u);
  EXPECT_EQ(step->version, 1u);
  EXPECT_FALSE(step->duplicate);
  EXPECT_FALSE(step->stale);
  EXPECT_DOUBLE_EQ(step->loss, 0.5);  // 1.5 over 3 samples
  EXPECT_EQ(client->version(), 1u);
  EXPECT_TRUE(testing::BitIdentical(Copy(client->params()), server_->trainer()->Parameters()));
  for (float g : client->grad()) ASSERT_EQ(g, 0.0f);
  EXPECT_EQ(client->pending_samples(), 0u);
  EXPECT_EQ(server_->trainer()->GetStatus().contributions_accepted(), 1u);
}

TEST_F(ClientTest, WorkersOfAWindowEndWithTheSameParameters) {
  Start(3);
  std::vector<std::unique_ptr<Client>> clients;
  for (uint32_t w = 0; w < 3; ++w) clients.push_back(Connect(w));
  for (auto& c : clients) ASSERT_NE(c, nullptr);
  std::vector<absl::StatusOr<StepResult>> results(3, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (uint32_t w = 0; w < 3; ++w) {
    threads.emplace_back([&, w] {
      Compute(*clients[w], 1.0f + w);
      results[w] = clients[w]->Step();
    });
  }
  for (auto& t : threads) t.join();
  for (uint32_t w = 0; w < 3; ++w) {
    ASSERT_TRUE(results[w].ok()) << results[w].status();
    EXPECT_EQ(results[w]->version, 1u);
    EXPECT_TRUE(testing::BitIdentical(Copy(clients[w]->params()), server_->trainer()->Parameters()));
  }
}

TEST_F(ClientTest, DiscardDropsTheWindowsGradientsAndMicroBatches) {
  Start(1);
  auto client = Connect(0);
  ASSERT_NE(client, nullptr);
  Compute(*client, 2.0f);
  ASSERT_TRUE(client->SetUntouched({1}).ok());
  client->Discard();
  for (float g : client->grad()) ASSERT_EQ(g, 0.0f);
  EXPECT_EQ(client->pending_micro_batches(), 0u);
  EXPECT_TRUE(client->untouched().empty());
  EXPECT_EQ(client->version(), 0u);
  const auto step = client->Step();
  EXPECT_EQ(ReasonOf(step.status()), v1::ERROR_REASON_NOTHING_TO_PUSH) << step.status();
  EXPECT_EQ(server_->trainer()->GetStatus().contributions_accepted(), 0u);
}

TEST_F(ClientTest, SetUntouchedSortsChecksAndEndsWithTheWindow) {
  Start(1);
  auto client = Connect(0);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->SetUntouched({5}).code(), absl::StatusCode::kInvalidArgument);  // the job has 2 tensors
  EXPECT_TRUE(client->untouched().empty());
  ASSERT_TRUE(client->SetUntouched({1, 1}).ok());
  EXPECT_EQ(client->untouched(), (std::vector<uint32_t>{1}));
  // Tensor b untouched: its gradient stays zero and the server keeps b.
  for (size_t i = 0; i < 407; ++i) client->grad()[i] = 0.25f;
  client->AddMicroBatch(1, 0.0);
  const std::vector<float> before = Copy(client->params());
  ASSERT_TRUE(client->Step().ok());
  EXPECT_TRUE(client->untouched().empty());
  EXPECT_NE(client->params()[0], before[0]);
  EXPECT_EQ(client->params()[410], before[410]);
}

TEST_F(ClientTest, ReportsMetricsReadsStatusAndLeaves) {
  Start(1);
  auto client = Connect(0);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->ReportTestAccuracy(0.5, 0).ok());
  EXPECT_EQ(client->ReportTestAccuracy(2.0, 0).code(), absl::StatusCode::kInvalidArgument);
  auto status = client->GetStatus();
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->accuracy_history_size(), 1);
  EXPECT_DOUBLE_EQ(status->accuracy_history(0).test_accuracy(), 0.5);
  ASSERT_TRUE(client->Leave().ok());
  EXPECT_EQ(server_->trainer()->GetStatus().workers(0).state(), v1::WORKER_STATE_LEFT);
}

TEST(ClientShardedTest, StepOnAShardedJobPushesAndPullsEachShardsPart) {
  int port = 0;
  auto server = rpc_test::StartTwoShards(SmallJob(1, 10), &port);
  ASSERT_NE(server, nullptr);
  const std::string address = Local(port);
  auto client = Client::Connect(OptionsFor(address + "," + address, 0));
  ASSERT_TRUE(client.ok()) << client.status();
  for (size_t i = 0; i < (*client)->grad().size(); ++i) (*client)->grad()[i] = 0.01f * static_cast<float>(i);
  (*client)->AddMicroBatch(1, 0.5);
  auto step = (*client)->Step();
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(step->version, 1u);
  // The parameters held are each shard's part, end to end.
  std::vector<float> served;
  for (Trainer* t : server->trainers()) {
    EXPECT_EQ(t->version(), 1u);
    for (float p : t->Parameters()) served.push_back(p);
  }
  EXPECT_TRUE(testing::BitIdentical(Copy((*client)->params()), served));
}

TEST(ClientWireFormatTest, ParsesTheWireFormatsItKnows) {
  EXPECT_EQ(*ParseWireFormat("f32"), v1::WIRE_FORMAT_F32);
  EXPECT_EQ(*ParseWireFormat("bf16"), v1::WIRE_FORMAT_BF16);
  EXPECT_EQ(*ParseWireFormat("f16"), v1::WIRE_FORMAT_F16);
  EXPECT_EQ(ParseWireFormat("fp8").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gradacc
