// ShardRouter: which served shard a call is for, from its x-gradacc-shard
// metadata, over real gRPC (a test service answers with the routed shard).
#include "server/rpc/shard_router.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "server/rpc/authorize.h"
#include "tests/server/rpc/rpc_test_util.h"

namespace gradacc {
namespace {

using rpc_test::Reason;

// GetStatus answers with the index of the shard the router picks (in
// Status.shard); "x-test-job-wide" asks for a job-wide route.
class RouteProbe final : public v1::ControlPlane::CallbackService {
 public:
  explicit RouteProbe(const ShardRouter* router) : router_(router) {}
  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context, const v1::GetStatusRequest*,
                                      v1::Status* response) override {
    const bool job_wide = context->client_metadata().count("x-test-job-wide") > 0;
    auto shard = router_->Route(context, job_wide);
    if (shard.ok()) response->set_shard((*shard)->index);
    return Finished(context, shard.status());
  }

 private:
  const ShardRouter* const router_;
};

class ShardRouterTest : public ::testing::Test {
 protected:
  void Serve(std::vector<uint32_t> indices) {
    std::vector<ServedShard> shards;
    for (uint32_t i : indices) shards.push_back({i, nullptr, nullptr});
    router_ = std::make_unique<ShardRouter>(std::move(shards));
    probe_ = std::make_unique<RouteProbe>(router_.get());
    int port = 0;
    server_ = rpc_test::Serve(probe_.get(), &port);
    stub_ = v1::ControlPlane::NewStub(rpc_test::Connect(port));
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(rpc_test::Deadline(absl::Seconds(1)));
  }
  // The shard routed to, or -1 with `status` set.
  int Route(const char* shard, bool job_wide = false, grpc::Status* status = nullptr) {
    grpc::ClientContext ctx;
    rpc_test::Prepare(&ctx);
    if (shard != nullptr) ctx.AddMetadata("x-gradacc-shard", shard);
    if (job_wide) ctx.AddMetadata("x-test-job-wide", "1");
    v1::Status response;
    const grpc::Status s = stub_->GetStatus(&ctx, v1::GetStatusRequest(), &response);
    if (status != nullptr) *status = s;
    return s.ok() ? static_cast<int>(response.shard()) : -1;
  }

  std::unique_ptr<ShardRouter> router_;
  std::unique_ptr<RouteProbe> probe_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::ControlPlane::Stub> stub_;
};

TEST_F(ShardRouterTest, OnlyShardServedTakesCallsWithoutMetadata) {
  Serve({3});
  EXPECT_EQ(Route(nullptr), 3);
  EXPECT_EQ(Route("3"), 3);
}

TEST_F(ShardRouterTest, CallGoesToTheShardItNames) {
  Serve({0, 4, 8});
  EXPECT_EQ(Route("4"), 4);
  EXPECT_EQ(Route("8"), 8);
  EXPECT_EQ(Route("0"), 0);
}

TEST_F(ShardRouterTest, CallWithoutMetadataToSeveralShardsIsWrongShardUnlessJobWide) {
  Serve({0, 4, 8});
  grpc::Status status;
  EXPECT_EQ(Route(nullptr, false, &status), -1);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Reason(status), v1::ERROR_REASON_WRONG_SHARD);
  EXPECT_NE(status.error_message().find("0, 4, 8"), std::string::npos) << status.error_message();
  // Status, watch and the ledger: any shard answers for the job, the first.
  EXPECT_EQ(Route(nullptr, /*job_wide=*/true), 0);
}

TEST_F(ShardRouterTest, ShardNotServedHereOrNotANumberIsWrongShard) {
  Serve({0, 4});
  for (const char* value : {"5", "abc", "-1"}) {
    grpc::Status status;
    EXPECT_EQ(Route(value, false, &status), -1) << value;
    EXPECT_EQ(Reason(status), v1::ERROR_REASON_WRONG_SHARD) << value;
    EXPECT_NE(status.error_message().find(absl::StrCat("x-gradacc-shard: ", value)), std::string::npos)
        << status.error_message();
  }
  // A named shard is checked even for job-wide calls.
  EXPECT_EQ(Route("5", /*job_wide=*/true), -1);
}

}  // namespace
}  // namespace gradacc
