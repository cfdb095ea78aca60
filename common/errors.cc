#include "common/errors.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"

namespace gradacc {
namespace {

struct ReasonInfo {
  absl::StatusCode code;
  v1::ClientAction action;
};

// The one table of reasons; error.proto documents the same.
ReasonInfo InfoOf(v1::ErrorReason reason) {
  using C = absl::StatusCode;
  constexpr auto kFix = v1::CLIENT_ACTION_FIX_REQUEST;
  switch (reason) {
    case v1::ERROR_REASON_UNKNOWN_JOB:
      return {C::kNotFound, kFix};
    case v1::ERROR_REASON_UNKNOWN_WORKER:
    case v1::ERROR_REASON_SIZE:
    case v1::ERROR_REASON_MANIFEST:
    case v1::ERROR_REASON_SAMPLES:
    case v1::ERROR_REASON_NOT_FINITE:
    case v1::ERROR_REASON_WIRE_FORMAT:
    case v1::ERROR_REASON_PROTOCOL:
    case v1::ERROR_REASON_TENSOR_INDEX:
    case v1::ERROR_REASON_TENSOR_NAME:
    case v1::ERROR_REASON_CHUNK_SIZE:
    case v1::ERROR_REASON_CHUNK_RANGE:
    case v1::ERROR_REASON_OUTSIDE_SHARD:
    case v1::ERROR_REASON_OVERLAP:
    case v1::ERROR_REASON_MISSING_CHUNKS:
    case v1::ERROR_REASON_COVERS:
    case v1::ERROR_REASON_KEY_REUSED:
    case v1::ERROR_REASON_BAD_VALUE:
    case v1::ERROR_REASON_WRONG_SHARD:
      return {C::kInvalidArgument, kFix};
    case v1::ERROR_REASON_SECOND_CONTRIBUTION:
    case v1::ERROR_REASON_NOTHING_TO_PUSH:
    case v1::ERROR_REASON_UNSUPPORTED:
    case v1::ERROR_REASON_MISUSE:
      return {C::kFailedPrecondition, kFix};
    case v1::ERROR_REASON_NOT_JOINED:
    case v1::ERROR_REASON_NOT_ATTACHED:
      return {C::kFailedPrecondition, v1::CLIENT_ACTION_REJOIN};
    case v1::ERROR_REASON_CONTRIBUTION_LOST:
      return {C::kFailedPrecondition, v1::CLIENT_ACTION_PUSH_AGAIN};
    case v1::ERROR_REASON_STALE_WINDOW:
      return {C::kAborted, v1::CLIENT_ACTION_PULL};
    case v1::ERROR_REASON_WINDOW_NOT_OPEN:
    case v1::ERROR_REASON_NOT_A_MEMBER_YET:
      return {C::kFailedPrecondition, v1::CLIENT_ACTION_PULL};
    case v1::ERROR_REASON_PLAN_CHANGED:
      return {C::kFailedPrecondition, v1::CLIENT_ACTION_RECOMPUTE};
    case v1::ERROR_REASON_OVERLOADED:
      return {C::kResourceExhausted, v1::CLIENT_ACTION_RETRY};
    case v1::ERROR_REASON_SHUTTING_DOWN:
    case v1::ERROR_REASON_NOT_DURABLE:
    case v1::ERROR_REASON_PEER_SHARD_AWAY:
      return {C::kUnavailable, v1::CLIENT_ACTION_RETRY};
    case v1::ERROR_REASON_PULL_TIMEOUT:
      return {C::kDeadlineExceeded, v1::CLIENT_ACTION_RETRY};
    case v1::ERROR_REASON_PUSH_TIMEOUT:
      return {C::kCancelled, v1::CLIENT_ACTION_RETRY};
    case v1::ERROR_REASON_DUPLICATE:
      return {C::kAlreadyExists, v1::CLIENT_ACTION_ACKNOWLEDGED};
    case v1::ERROR_REASON_JOB_DONE:
    case v1::ERROR_REASON_VERSION_GONE:
      return {C::kFailedPrecondition, v1::CLIENT_ACTION_STOP};
    case v1::ERROR_REASON_SERVER_BEHIND:
      return {C::kDataLoss, v1::CLIENT_ACTION_STOP};
    case v1::ERROR_REASON_UNAUTHENTICATED:
      return {C::kUnauthenticated, v1::CLIENT_ACTION_STOP};
    case v1::ERROR_REASON_PERMISSION_DENIED:
      return {C::kPermissionDenied, v1::CLIENT_ACTION_STOP};
    default:
      return {C::kUnknown, v1::CLIENT_ACTION_UNSPECIFIED};
  }
}

bool ParseInfo(const absl::Status& status, google::rpc::ErrorInfo* info) {
  if (status.ok()) return false;
  auto payload = status.GetPayload(kErrorInfoTypeUrl);
  if (!payload.has_value()) return false;
  return info->ParseFromString(std::string(*payload)) && info->domain() == kErrorDomain;
}

}  // namespace

absl::StatusCode CodeOf(v1::ErrorReason reason) { return InfoOf(reason).code; }

v1::ClientAction ActionOf(v1::ErrorReason reason) { return InfoOf(reason).action; }

std::string ReasonLabel(v1::ErrorReason reason) {
  std::string name = v1::ErrorReason_Name(reason);
  constexpr absl::string_view kPrefix = "ERROR_REASON_";
  if (absl::string_view(name).substr(0, kPrefix.size()) == kPrefix) name.erase(0, kPrefix.size());
  return absl::AsciiStrToLower(name);
}

absl::Status Refusal(v1::ErrorReason reason, absl::string_view message, ErrorMetadata metadata) {
  absl::Status status(CodeOf(reason), message);
  google::rpc::ErrorInfo info;
  info.set_reason(v1::ErrorReason_Name(reason));
  info.set_domain(std::string(kErrorDomain));
  (*info.mutable_metadata())["action"] = v1::ClientAction_Name(ActionOf(reason));
  for (const auto& [key, value] : metadata) (*info.mutable_metadata())[std::string(key)] = value;
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return status;
}

v1::ErrorReason ReasonOf(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  v1::ErrorReason reason = v1::ERROR_REASON_UNSPECIFIED;
  if (ParseInfo(status, &info) && !v1::ErrorReason_Parse(info.reason(), &reason)) {
    reason = v1::ERROR_REASON_UNSPECIFIED;
  }
  return reason;
}

v1::ClientAction ActionOf(const absl::Status& status) {
  const v1::ErrorReason reason = ReasonOf(status);
  if (reason != v1::ERROR_REASON_UNSPECIFIED) return ActionOf(reason);
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return v1::CLIENT_ACTION_UNSPECIFIED;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
      return v1::CLIENT_ACTION_RETRY;
    default:
      return v1::CLIENT_ACTION_FIX_REQUEST;
  }
}

std::string ErrorMetadataOf(const absl::Status& status, absl::string_view key) {
  google::rpc::ErrorInfo info;
  if (!ParseInfo(status, &info)) return "";
  auto it = info.metadata().find(std::string(key));
  return it == info.metadata().end() ? "" : it->second;
}

absl::Status Annotate(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  absl::Status annotated(status.code(), absl::StrCat(prefix, ": ", status.message()));
  status.ForEachPayload([&](absl::string_view url, const absl::Cord& payload) { annotated.SetPayload(url, payload); });
  return annotated;
}

}  // namespace gradacc
