#include "common/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"

namespace gradacc {

namespace {

// What is wrong with byte `c` of a secret, in words that do not reveal it.
std::string Describe(unsigned char c) {
  if (c == '\n' || c == '\r') return "a line break (a secret is one line)";
  if (c == ' ' || c == '\t') return "white space";
  if (c >= 0x80) return "a non-ASCII byte";
  return absl::StrFormat("control byte 0x%02x", c);
}

}  // namespace

absl::Status ValidateSecret(absl::string_view secret, absl::string_view source) {
  if (secret.size() > kMaxSecretBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the secret in %s is %d bytes long; at most %d are allowed", source, secret.size(),
                        kMaxSecretBytes));
  }
  for (size_t i = 0; i < secret.size(); ++i) {
    const auto c = static_cast<unsigned char>(secret[i]);
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the secret in %s has %s at byte %d; it must be one line of visible ASCII characters (the secret itself "
          "is not shown)",
          source, Describe(c), i + 1));
    }
  }
  return absl::OkStatus();
}

void WarnIfShared(const std::string& file) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0 || (st.st_mode & (S_IRWXG | S_IRWXO)) == 0) return;
  absl::FPrintF(stderr,
                "gradacc: WARNING: secret file '%s' is accessible by %s (mode %04o): anyone who can read it can use "
                "the token; run chmod 600 '%s'\n",
                file, (st.st_mode & S_IRWXO) != 0 ? "other users" : "its group", st.st_mode & 07777, file);
}

absl::StatusOr<std::string> LoadSecret(const std::string& file, const char* env) {
  std::string secret, source;
  if (!file.empty()) {
    auto read = ReadFileToString(file);
    if (!read.ok()) return absl::NotFoundError(absl::StrCat("cannot read secret file '", file, "'"));
    secret = std::string(absl::StripAsciiWhitespace(*read));
    if (secret.empty()) return absl::InvalidArgumentError(absl::StrCat("secret file '", file, "' is empty"));
    WarnIfShared(file);
    source = absl::StrCat("file '", file, "'");
  } else {
    const char* value = env != nullptr ? std::getenv(env) : nullptr;
    if (value == nullptr) return std::string();
    secret = std::string(absl::StripAsciiWhitespace(value));
    source = absl::StrCat("$", env);
  }
  if (absl::Status valid = ValidateSecret(secret, source); !valid.ok()) return valid;
  return secret;
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
  // Every comparison always runs: timing says nothing about which matched.
  const bool worker = !tokens.worker.empty() && ConstantTimeEquals(token, tokens.worker);
  const bool reader = !tokens.reader.empty() && ConstantTimeEquals(token, tokens.reader);
  const bool shard = !tokens.shard.empty() && ConstantTimeEquals(token, tokens.shard);
  if (worker) return Role::kWorker;
  if (reader) return Role::kReader;
  if (shard) return Role::kShard;
  return Role::kNone;
}

}  // namespace gradacc
