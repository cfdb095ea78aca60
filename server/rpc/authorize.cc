#include "server/rpc/authorize.h"

#include <algorithm>

#include "common/errors.h"

namespace gradacc {
namespace {

const char* Needs(std::initializer_list<Role> accepted) {
  const auto has = [&](Role r) { return std::find(accepted.begin(), accepted.end(), r) != accepted.end(); };
  if (has(Role::kReader)) return "the shard token is only for calls between shards; a reader or worker token is needed";
  if (has(Role::kWorker)) return "this token may only read status; a worker token is needed";
  return "only peer shards (the shard token) may make this call";
}

}  // namespace

absl::Status AuthorizeAny(const grpc::CallbackServerContext* context, const TokenSet& tokens,
                          std::initializer_list<Role> accepted) {
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
  if (std::find(accepted.begin(), accepted.end(), role) == accepted.end()) {
    return Refusal(v1::ERROR_REASON_PERMISSION_DENIED, Needs(accepted));
  }
  return absl::OkStatus();
}

absl::Status Authorize(const grpc::CallbackServerContext* context, const TokenSet& tokens, Role needed) {
  switch (needed) {
    case Role::kReader:
      return AuthorizeAny(context, tokens, {Role::kReader, Role::kWorker});
    case Role::kWorker:
      return AuthorizeAny(context, tokens, {Role::kWorker});
    case Role::kShard:
      return AuthorizeAny(context, tokens, {Role::kShard});
    case Role::kNone:
      break;
  }
  return AuthorizeAny(context, tokens, {});
}

}  // namespace gradacc
