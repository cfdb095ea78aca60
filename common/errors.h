// The error model (proto/gradacc/v1/error.proto): every refusal is an
// absl::Status whose code follows from a machine-readable reason, carried as
// a google.rpc.ErrorInfo payload. Across gRPC the payload travels in the
// status details (common/grpc_status.h), so a client — ours or anyone's —
// tells "rejoin and retry" from "your request is wrong" without parsing a
// message.
//
// The table of reasons (their codes and the action a client takes) lives in
// one place, errors.cc; a unit test checks it against every enum value.
// Thread-safe (pure functions).
#ifndef GRADACC_COMMON_ERRORS_H_
#define GRADACC_COMMON_ERRORS_H_

#include <initializer_list>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gradacc/v1/error.pb.h"

namespace gradacc {

// ErrorInfo.domain of every gradacc refusal.
inline constexpr absl::string_view kErrorDomain = "gradacc.v1";
// The payload's type URL (absl::Status::SetPayload) and the Any's in
// google.rpc.Status.details.
inline constexpr absl::string_view kErrorInfoTypeUrl = "type.googleapis.com/google.rpc.ErrorInfo";

using ErrorMetadata = std::initializer_list<std::pair<absl::string_view, std::string>>;

// The status code a reason always comes with.
absl::StatusCode CodeOf(v1::ErrorReason reason);
// What a client does about it.
v1::ClientAction ActionOf(v1::ErrorReason reason);
// "stale_window" for ERROR_REASON_STALE_WINDOW: the label of metrics.
std::string ReasonLabel(v1::ErrorReason reason);

// A refusal: the reason's code, `message`, and an ErrorInfo payload with the
// reason, the action and `metadata`.
absl::Status Refusal(v1::ErrorReason reason, absl::string_view message, ErrorMetadata metadata = {});

// The reason carried by `status` (UNSPECIFIED when it carries none: OK, or a
// failure that did not come from a gradacc decision).
v1::ErrorReason ReasonOf(const absl::Status& status);
// The action for `status`: its reason's, or for a status without a reason,
// RETRY for transport-like codes (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
// RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN) and FIX_REQUEST otherwise.
v1::ClientAction ActionOf(const absl::Status& status);
// A metadata value of the status's ErrorInfo ("" when absent).
std::string ErrorMetadataOf(const absl::Status& status, absl::string_view key);
// `status` with `prefix: ` before its message, payload kept.
absl::Status Annotate(const absl::Status& status, absl::string_view prefix);

}  // namespace gradacc

#endif  // GRADACC_COMMON_ERRORS_H_
