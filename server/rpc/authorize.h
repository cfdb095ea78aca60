// Authorization of every gradacc RPC, in one place: the role a call's bearer
// token grants against the role the method needs (worker for the data
// plane and reports; reader for status; the shard token only for what peer
// shards call: GetNormPartial and per-shard status). Thread-safe (pure
// functions).
#ifndef GRADACC_SERVER_RPC_AUTHORIZE_H_
#define GRADACC_SERVER_RPC_AUTHORIZE_H_

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include <initializer_list>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/auth.h"
#include "common/grpc_status.h"

namespace gradacc {

// OK when tokens are off or the call's token grants `needed` (kReader: a
// reader or worker token; kWorker: a worker token; kShard: the shard token);
// else UNAUTHENTICATED (no or unknown token) or PERMISSION_DENIED (a token
// of another role), with their ErrorInfo reasons.
absl::Status Authorize(const grpc::CallbackServerContext* context, const TokenSet& tokens, Role needed);
// The same for a call that more than one role may make.
absl::Status AuthorizeAny(const grpc::CallbackServerContext* context, const TokenSet& tokens,
                          std::initializer_list<Role> accepted);

// A unary call finished at once with `status`.
inline grpc::ServerUnaryReactor* Finished(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// A unary handler: authorises, runs `fn` (returning absl::Status) and
// finishes the call with its status, in the error model's form.
template <typename Fn>
grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const TokenSet& tokens, Role needed, Fn fn) {
  absl::Status status = Authorize(context, tokens, needed);
  if (status.ok()) status = fn();
  return Finished(context, status);
}

// Streaming calls refused before they start.
template <typename Request>
class RefusedRead final : public grpc::ServerReadReactor<Request> {
 public:
  explicit RefusedRead(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

template <typename Response>
class RefusedWrite final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RefusedWrite(const absl::Status& status) { this->Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_AUTHORIZE_H_
