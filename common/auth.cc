#include "common/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace gradacc {

absl::StatusOr<std::string> LoadSecret(const std::string& file, const char* env) {
  if (!file.empty()) {
    auto read = ReadFileToString(file);
    if (!read.ok()) return absl::NotFoundError(absl::StrCat("cannot read secret file '", file, "'"));
    std::string secret(absl::StripAsciiWhitespace(*read));
    if (secret.empty()) return absl::InvalidArgumentError(absl::StrCat("secret file '", file, "' is empty"));
    return secret;
  }
  const char* value = env != nullptr ? std::getenv(env) : nullptr;
  return value != nullptr ? std::string(absl::StripAsciiWhitespace(value)) : std::string();
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(a.data()), a.size(), da);
  SHA256(reinterpret_cast<const unsigned char*>(b.data()), b.size(), db);
  return CRYPTO_memcmp(da, db, sizeof(da)) == 0;
}

Role RoleOf(const TokenSet& tokens, absl::string_view authorization) {
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWith(authorization, kBearer)) return Role::kNone;
  const absl::string_view token = authorization.substr(kBearer.size());
  if (token.empty()) return Role::kNone;
  // Both comparisons always run: timing says nothing about which matched.
  const bool worker = !tokens.worker.empty() && ConstantTimeEquals(token, tokens.worker);
  const bool reader = !tokens.reader.empty() && ConstantTimeEquals(token, tokens.reader);
  if (worker) return Role::kWorker;
  if (reader) return Role::kReader;
  return Role::kNone;
}

}  // namespace gradacc
