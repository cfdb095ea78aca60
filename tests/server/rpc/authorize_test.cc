// Authorize, AuthorizeAny, Unary and the refused streams, over real gRPC: a
// test service guards each method with the role it names, and the calls
// carry a bearer token or none.
#include "server/rpc/authorize.h"

#include <atomic>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "tests/server/rpc/rpc_test_util.h"

namespace gradacc {
namespace {

using rpc_test::Reason;

// GetStatus needs a reader, GetSteps a worker, GetNormPartial the shard
// token (each through Unary); ReportMetric a reader or the shard token
// (AuthorizeAny); WatchStatus a reader, refused with RefusedWrite.
class GuardedService final : public v1::ControlPlane::CallbackService {
 public:
  explicit GuardedService(TokenSet tokens) : tokens_(std::move(tokens)) {}
  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context, const v1::GetStatusRequest*,
                                      v1::Status* response) override {
    return Unary(context, tokens_, Role::kReader, [&] { return Ran(response); });
  }
  grpc::ServerUnaryReactor* GetSteps(grpc::CallbackServerContext* context, const v1::GetStepsRequest*,
                                     v1::GetStepsResponse*) override {
    return Unary(context, tokens_, Role::kWorker, [&] { return Ran(nullptr); });
  }
  grpc::ServerUnaryReactor* GetNormPartial(grpc::CallbackServerContext* context, const v1::GetNormPartialRequest*,
                                           v1::GetNormPartialResponse*) override {
    return Unary(context, tokens_, Role::kShard, [&] { return Ran(nullptr); });
  }
  grpc::ServerUnaryReactor* ReportMetric(grpc::CallbackServerContext* context, const v1::ReportMetricRequest*,
                                         v1::ReportMetricResponse*) override {
    return Finished(context, AuthorizeAny(context, tokens_, {Role::kReader, Role::kShard}));
  }
  grpc::ServerWriteReactor<v1::Status>* WatchStatus(grpc::CallbackServerContext* context,
                                                    const v1::WatchStatusRequest*) override {
    // Authorised: an empty stream that ends OK.
    return new RefusedWrite<v1::Status>(Authorize(context, tokens_, Role::kReader));
  }
  int ran() const { return ran_.load(); }

 private:
  absl::Status Ran(v1::Status* response) {
    ++ran_;
    if (response != nullptr) response->set_job_id("ran");
    return absl::OkStatus();
  }
  const TokenSet tokens_;
  std::atomic<int> ran_{0};
};

enum class Method { kStatus, kSteps, kNorm, kMetric };

class AuthorizeTest : public ::testing::Test {
 protected:
  void Serve(TokenSet tokens) {
    service_ = std::make_unique<GuardedService>(std::move(tokens));
    int port = 0;
    server_ = rpc_test::Serve(service_.get(), &port);
    stub_ = v1::ControlPlane::NewStub(rpc_test::Connect(port));
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(rpc_test::Deadline(absl::Seconds(1)));
  }
  // `authorization`: the whole header value; empty = none sent.
  grpc::Status Call(Method method, const std::string& authorization) {
    grpc::ClientContext ctx;
    rpc_test::Prepare(&ctx);
    if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
    switch (method) {
      case Method::kStatus: {
        v1::Status r;
        return stub_->GetStatus(&ctx, v1::GetStatusRequest(), &r);
      }
      case Method::kSteps: {
        v1::GetStepsResponse r;
        return stub_->GetSteps(&ctx, v1::GetStepsRequest(), &r);
      }
      case Method::kNorm: {
        v1::GetNormPartialResponse r;
        return stub_->GetNormPartial(&ctx, v1::GetNormPartialRequest(), &r);
      }
      case Method::kMetric: {
        v1::ReportMetricResponse r;
        return stub_->ReportMetric(&ctx, v1::ReportMetricRequest(), &r);
      }
    }
    return grpc::Status(grpc::StatusCode::INTERNAL, "unreachable");
  }

  std::unique_ptr<GuardedService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::ControlPlane::Stub> stub_;
};

TEST_F(AuthorizeTest, WithoutTokensConfiguredEveryCallIsAllowed) {
  Serve(TokenSet());
  for (Method m : {Method::kStatus, Method::kSteps, Method::kNorm, Method::kMetric}) {
    EXPECT_TRUE(Call(m, "").ok());
  }
  EXPECT_EQ(service_->ran(), 3);  // the three Unary handlers ran
}

TEST_F(AuthorizeTest, MissingOrUnknownTokenIsUnauthenticatedAndTheHandlerDoesNotRun) {
  Serve(rpc_test::AllTokens());
  const grpc::Status missing = Call(Method::kStatus, "");
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Reason(missing), v1::ERROR_REASON_UNAUTHENTICATED);
  EXPECT_NE(missing.error_message().find("missing bearer token"), std::string::npos) << missing.error_message();
  const grpc::Status unknown = Call(Method::kStatus, "Bearer not-a-token");
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(unknown.error_message().find("unknown bearer token"), std::string::npos) << unknown.error_message();
  EXPECT_EQ(service_->ran(), 0);
}

TEST_F(AuthorizeTest, EachRoleReachesExactlyTheCallsItMayMake) {
  Serve(rpc_test::AllTokens());
  // Reader: status only. Worker: status and worker calls. Shard: the calls
  // between shards only.
  EXPECT_TRUE(Call(Method::kStatus, "Bearer reader-secret").ok());
  EXPECT_EQ(Reason(Call(Method::kSteps, "Bearer reader-secret")), v1::ERROR_REASON_PERMISSION_DENIED);
  EXPECT_EQ(Reason(Call(Method::kNorm, "Bearer reader-secret")), v1::ERROR_REASON_PERMISSION_DENIED);
  EXPECT_TRUE(Call(Method::kStatus, "Bearer worker-secret").ok());
  EXPECT_TRUE(Call(Method::kSteps, "Bearer worker-secret").ok());
  EXPECT_EQ(Reason(Call(Method::kNorm, "Bearer worker-secret")), v1::ERROR_REASON_PERMISSION_DENIED);
  const grpc::Status shard_on_status = Call(Method::kStatus, "Bearer shard-secret");
  EXPECT_EQ(shard_on_status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(shard_on_status.error_message().find("only for calls between shards"), std::string::npos)
      << shard_on_status.error_message();
  EXPECT_TRUE(Call(Method::kNorm, "Bearer shard-secret").ok());
  EXPECT_EQ(service_->ran(), 4);
}

TEST_F(AuthorizeTest, AuthorizeAnyAcceptsOnlyTheRolesListed) {
  Serve(rpc_test::AllTokens());
  EXPECT_TRUE(Call(Method::kMetric, "Bearer reader-secret").ok());
  EXPECT_TRUE(Call(Method::kMetric, "Bearer shard-secret").ok());
  // A worker token grants more than a reader's, but the list is exact.
  EXPECT_EQ(Call(Method::kMetric, "Bearer worker-secret").error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(AuthorizeTest, RefusedStreamEndsWithTheRefusalBeforeAnyMessage) {
  Serve(rpc_test::AllTokens());
  grpc::ClientContext ctx;
  rpc_test::Prepare(&ctx);
  ctx.AddMetadata("authorization", "Bearer shard-secret");
  auto reader = stub_->WatchStatus(&ctx, v1::WatchStatusRequest());
  v1::Status message;
  EXPECT_FALSE(reader->Read(&message));
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Reason(status), v1::ERROR_REASON_PERMISSION_DENIED);
}

}  // namespace
}  // namespace gradacc
