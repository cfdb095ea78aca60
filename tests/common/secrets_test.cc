// Loading secrets (common/auth.h): a token that could not travel as a gRPC
// header is refused when it is loaded, with a message that names where it
// came from and never shows it.
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "common/auth.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

// Each is refused; its visible part starts "TOPSECRET" so that a message
// showing any of it is caught.
const std::pair<const char*, std::string> kBadSecrets[] = {
    {"a second line", "TOPSECRET-one\nTOPSECRET-two"},
    {"a carriage return inside", std::string("TOPSECRET\r-rest")},
    {"a space inside", "TOPSECRET with-space"},
    {"a control byte", std::string("TOPSECRET\x01-x")},
    {"a NUL byte", std::string("TOPSECRET\0-x", 12)},
    {"non-ASCII", "TOPSECRET-\xc3\xa9t\xc3\xa9"},
    {"DEL", "TOPSECRET\x7f"},
};

TEST(SecretsTest, AGoodTokenLoadsWithoutItsSurroundingWhitespace) {
  const std::string dir = testing::MakeTempDir("secrets_ok");
  std::ofstream(dir + "/token") << "  wkr-5f1c0a9e.27_d84b~6c93+a1/e0=\n\n";
  auto token = LoadSecret(dir + "/token", nullptr);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "wkr-5f1c0a9e.27_d84b~6c93+a1/e0=");
}

TEST(SecretsTest, BadFilesAreRefusedWithoutShowingTheSecret) {
  const std::string dir = testing::MakeTempDir("secrets_bad");
  int i = 0;
  for (const auto& [what, secret] : kBadSecrets) {
    SCOPED_TRACE(what);
    const std::string path = dir + "/token" + std::to_string(i++);
    std::ofstream(path, std::ios::binary) << secret << "\n";
    auto token = LoadSecret(path, nullptr);
    ASSERT_FALSE(token.ok());
    EXPECT_EQ(token.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(token.status().message(), path)) << token.status();
    EXPECT_FALSE(absl::StrContains(token.status().ToString(), "TOPSECRET")) << token.status();
    EXPECT_FALSE(absl::StrContains(token.status().ToString(), "-two")) << token.status();
  }
}

TEST(SecretsTest, TheEnvironmentVariableIsCheckedToo) {
  setenv("GRADACC_SECRETS_TEST_TOKEN", "TOPSECRET\nmore", 1);
  auto token = LoadSecret("", "GRADACC_SECRETS_TEST_TOKEN");
  ASSERT_FALSE(token.ok());
  EXPECT_TRUE(absl::StrContains(token.status().message(), "$GRADACC_SECRETS_TEST_TOKEN")) << token.status();
  EXPECT_TRUE(absl::StrContains(token.status().message(), "line break")) << token.status();
  EXPECT_FALSE(absl::StrContains(token.status().message(), "TOPSECRET")) << token.status();
  unsetenv("GRADACC_SECRETS_TEST_TOKEN");
  auto unset = LoadSecret("", "GRADACC_SECRETS_TEST_TOKEN");
  ASSERT_TRUE(unset.ok());
  EXPECT_EQ(*unset, "");
}

TEST(SecretsTest, ValidateSecretSaysWhereAndWhatNotWhich) {
  EXPECT_TRUE(ValidateSecret("abc-DEF_123.~+/=", "x").ok());
  const absl::Status s = ValidateSecret("abc\tdef", "file 't'");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "file 't'")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "white space at byte 4")) << s;
  EXPECT_FALSE(ValidateSecret(std::string(kMaxSecretBytes + 1, 'a'), "x").ok());
}

TEST(SecretsTest, EachTokenGrantsItsOwnRole) {
  const TokenSet tokens{"worker-token", "reader-token", "shard-token"};
  EXPECT_EQ(RoleOf(tokens, "Bearer worker-token"), Role::kWorker);
  EXPECT_EQ(RoleOf(tokens, "Bearer reader-token"), Role::kReader);
  EXPECT_EQ(RoleOf(tokens, "Bearer shard-token"), Role::kShard);
  EXPECT_EQ(RoleOf(tokens, "Bearer other"), Role::kNone);
  EXPECT_EQ(RoleOf(tokens, "shard-token"), Role::kNone);
  EXPECT_EQ(RoleOf(tokens, "Bearer "), Role::kNone);
  // A role not configured is granted to nobody.
  EXPECT_EQ(RoleOf(TokenSet{"worker-token", "", ""}, "Bearer "), Role::kNone);
  EXPECT_TRUE(TokenSet({"", "", "shard-token"}).enabled());
  EXPECT_FALSE(TokenSet().enabled());
}

}  // namespace
}  // namespace gradacc
