// Bearer tokens: loading them (from a file or the environment, never from a
// flag's value, so they stay out of `ps` and logs), comparing them in
// constant time, and the roles they grant. Free functions; thread-safe.
#ifndef GRADACC_COMMON_AUTH_H_
#define GRADACC_COMMON_AUTH_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gradacc {

enum class Role {
  kNone,    // no or unknown token
  kReader,  // may read status and the ledger (and /metrics)
  kWorker,  // may also join, push, pull, leave and report metrics
  kShard,   // a peer shard: may only fetch norm partials and per-shard status
};

struct TokenSet {
  std::string worker;  // empty: not configured
  std::string reader;
  std::string shard;  // what sharded servers present to each other
  bool enabled() const { return !worker.empty() || !reader.empty() || !shard.empty(); }
};

// The secret in `file` (surrounding whitespace removed) when `file` is set,
// else the environment variable `env` (may be unset: returns ""), checked
// with ValidateSecret. A file that its group or other users may access gets
// a warning on stderr naming it (WarnIfShared).
absl::StatusOr<std::string> LoadSecret(const std::string& file, const char* env);
// Warns on stderr, naming `file`, when its mode lets its group or other
// users at it (bits 077).
void WarnIfShared(const std::string& file);

// OK when `secret` can travel as a bearer token in gRPC metadata: one line of
// visible ASCII (0x21-0x7E: no spaces, control bytes, line breaks or
// non-ASCII), at most kMaxSecretBytes. gRPC aborts the process on a header
// value outside that set (and prints the value), so every binary checks its
// secrets when it loads them. The error names `source` (a file or an
// environment variable) and the first bad byte's position, never the secret.
inline constexpr size_t kMaxSecretBytes = 4096;
absl::Status ValidateSecret(absl::string_view secret, absl::string_view source);

// Equal length and content, in time that depends on neither (both sides are
// hashed with SHA-256 first, then compared with CRYPTO_memcmp).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// The role an "authorization" header value ("Bearer <token>") grants.
Role RoleOf(const TokenSet& tokens, absl::string_view authorization);

}  // namespace gradacc

#endif  // GRADACC_COMMON_AUTH_H_
