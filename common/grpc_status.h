// The error model across gRPC: an absl::Status with an ErrorInfo payload
// (common/errors.h) becomes a grpc::Status whose binary details are a
// google.rpc.Status holding that ErrorInfo — the trailer
// `grpc-status-details-bin` any gRPC client can read — and back.
// Only the service edge and the client's stubs include this (gRPC headers
// are costly to compile). Thread-safe (pure functions).
#ifndef GRADACC_COMMON_GRPC_STATUS_H_
#define GRADACC_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace gradacc {

grpc::Status ToGrpcStatus(const absl::Status& status);
// `what`, when not empty, goes before the message ("push of window 3: ...").
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view what = "");

}  // namespace gradacc

#endif  // GRADACC_COMMON_GRPC_STATUS_H_
