#include "server/rpc/authorize.h"

#include "common/errors.h"

namespace gradacc {

absl::Status Authorize(const grpc::CallbackServerContext* context, const TokenSet& tokens, Role needed) {
  if (!tokens.enabled()) return absl::OkStatus();
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  const Role role =
      it == metadata.end() ? Role::kNone : RoleOf(tokens, absl::string_view(it->second.data(), it->second.size()));
  if (role == Role::kNone) {
    return Refusal(v1::ERROR_REASON_UNAUTHENTICATED, it == metadata.end()
                                                         ? "missing bearer token (authorization: Bearer <token>)"
                                                         : "unknown bearer token");
  }
  if (needed == Role::kWorker && role != Role::kWorker) {
    return Refusal(v1::ERROR_REASON_PERMISSION_DENIED,
                   "this token may only read status; a worker token is needed");
  }
  return absl::OkStatus();
}

}  // namespace gradacc
