// Unit tests of the error model (common/errors.h, common/grpc_status.h):
// every reason has a code and an action, and a refusal survives the trip
// through a gRPC status and back.
#include "common/errors.h"

#include "common/grpc_status.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

TEST(ErrorsTest, EveryReasonHasACodeAndAnAction) {
  const auto* descriptor = v1::ErrorReason_descriptor();
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto reason = static_cast<v1::ErrorReason>(descriptor->value(i)->number());
    if (reason == v1::ERROR_REASON_UNSPECIFIED) continue;
    SCOPED_TRACE(descriptor->value(i)->name());
    EXPECT_NE(CodeOf(reason), absl::StatusCode::kUnknown);
    EXPECT_NE(CodeOf(reason), absl::StatusCode::kOk);
    EXPECT_NE(ActionOf(reason), v1::CLIENT_ACTION_UNSPECIFIED);
    const absl::Status s = Refusal(reason, "why");
    EXPECT_EQ(s.code(), CodeOf(reason));
    EXPECT_EQ(ReasonOf(s), reason);
    EXPECT_EQ(ActionOf(s), ActionOf(reason));
  }
}

TEST(ErrorsTest, TheTableSaysWhatTheProtoSays) {
  EXPECT_EQ(CodeOf(v1::ERROR_REASON_STALE_WINDOW), absl::StatusCode::kAborted);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_STALE_WINDOW), v1::CLIENT_ACTION_PULL);
  EXPECT_EQ(CodeOf(v1::ERROR_REASON_DUPLICATE), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_DUPLICATE), v1::CLIENT_ACTION_ACKNOWLEDGED);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_NOT_JOINED), v1::CLIENT_ACTION_REJOIN);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_CONTRIBUTION_LOST), v1::CLIENT_ACTION_PUSH_AGAIN);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_NOTHING_TO_PUSH), v1::CLIENT_ACTION_FIX_REQUEST);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_KEY_REUSED), v1::CLIENT_ACTION_FIX_REQUEST);
  EXPECT_EQ(CodeOf(v1::ERROR_REASON_UNKNOWN_JOB), absl::StatusCode::kNotFound);
  EXPECT_EQ(CodeOf(v1::ERROR_REASON_PLAN_CHANGED), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ActionOf(v1::ERROR_REASON_PLAN_CHANGED), v1::CLIENT_ACTION_RECOMPUTE);
  EXPECT_EQ(ReasonLabel(v1::ERROR_REASON_STALE_WINDOW), "stale_window");
}

TEST(ErrorsTest, StatusesWithoutAReasonRetryOnlyTransportFailures) {
  EXPECT_EQ(ReasonOf(absl::UnavailableError("x")), v1::ERROR_REASON_UNSPECIFIED);
  EXPECT_EQ(ActionOf(absl::UnavailableError("x")), v1::CLIENT_ACTION_RETRY);
  EXPECT_EQ(ActionOf(absl::DeadlineExceededError("x")), v1::CLIENT_ACTION_RETRY);
  EXPECT_EQ(ActionOf(absl::InvalidArgumentError("x")), v1::CLIENT_ACTION_FIX_REQUEST);
  EXPECT_EQ(ActionOf(absl::FailedPreconditionError("x")), v1::CLIENT_ACTION_FIX_REQUEST);
  EXPECT_EQ(ReasonOf(absl::OkStatus()), v1::ERROR_REASON_UNSPECIFIED);
}

TEST(ErrorsTest, MetadataAndAnnotationKeepThePayload) {
  const absl::Status s = Refusal(v1::ERROR_REASON_STALE_WINDOW, "stale", {{"open_window", "7"}});
  EXPECT_EQ(ErrorMetadataOf(s, "open_window"), "7");
  EXPECT_EQ(ErrorMetadataOf(s, "action"), "CLIENT_ACTION_PULL");
  EXPECT_EQ(ErrorMetadataOf(s, "absent"), "");
  const absl::Status a = Annotate(s, "push of window 3");
  EXPECT_EQ(a.message(), "push of window 3: stale");
  EXPECT_EQ(ReasonOf(a), v1::ERROR_REASON_STALE_WINDOW);
}

TEST(ErrorsTest, RoundTripThroughGrpcStatusDetails) {
  const absl::Status s = Refusal(v1::ERROR_REASON_NOT_JOINED, "join first", {{"worker", "3"}});
  const grpc::Status g = ToGrpcStatus(s);
  EXPECT_EQ(g.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(g.error_message(), "join first");
  // What a client in another language sees: a google.rpc.Status with one
  // ErrorInfo in its details.
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(g.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  ASSERT_EQ(details.details_size(), 1);
  EXPECT_EQ(details.details(0).type_url(), "type.googleapis.com/google.rpc.ErrorInfo");
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(details.details(0).UnpackTo(&info));
  EXPECT_EQ(info.reason(), "ERROR_REASON_NOT_JOINED");
  EXPECT_EQ(info.domain(), "gradacc.v1");
  EXPECT_EQ(info.metadata().at("action"), "CLIENT_ACTION_REJOIN");
  EXPECT_EQ(info.metadata().at("worker"), "3");

  const absl::Status back = FromGrpcStatus(g, "push");
  EXPECT_EQ(back.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(back.message(), "push: join first");
  EXPECT_EQ(ReasonOf(back), v1::ERROR_REASON_NOT_JOINED);
  EXPECT_EQ(ActionOf(back), v1::CLIENT_ACTION_REJOIN);
  // A plain gRPC failure carries no reason.
  EXPECT_EQ(ReasonOf(FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"))),
            v1::ERROR_REASON_UNSPECIFIED);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

}  // namespace
}  // namespace gradacc
