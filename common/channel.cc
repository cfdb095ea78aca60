#include "common/channel.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/str_cat.h"
#include "common/auth.h"
#include "common/files.h"

namespace gradacc {

absl::Status LoadToken(const std::string& token_file, ConnectionOptions& options) {
  auto token = LoadSecret(token_file, "GRADACC_TOKEN");
  if (!token.ok()) return token.status();
  options.token = *token;
  return absl::OkStatus();
}

const std::string& ClientServiceConfigJson() {
  // Push and Pull are streams the client library retries itself (a push
  // keeps its contribution key); gRPC does not retry streams past their
  // first message anyway.
  static const std::string* config = new std::string(R"json({
  "methodConfig": [{
    "name": [
      {"service": "gradacc.v1.DataPlane", "method": "Join"},
      {"service": "gradacc.v1.DataPlane", "method": "Leave"},
      {"service": "gradacc.v1.DataPlane", "method": "AttachSharedMemory"},
      {"service": "gradacc.v1.ControlPlane", "method": "GetStatus"},
      {"service": "gradacc.v1.ControlPlane", "method": "ReportMetric"}
    ],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
})json");
  return *config;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options,
                                                           const grpc::ChannelArguments& args) {
  if (!options.token.empty()) {
    if (absl::Status valid = ValidateSecret(options.token, "the bearer token"); !valid.ok()) return valid;
  }
  grpc::ChannelArguments with_config = args;
  with_config.SetServiceConfigJSON(ClientServiceConfigJson());
  if (options.tls_ca_file.empty() && options.tls_cert_file.empty()) {
    return grpc::CreateCustomChannel(options.server, grpc::InsecureChannelCredentials(), with_config);
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca_file.empty()) {
    auto ca = ReadFileToString(options.tls_ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
  }
  if (!options.tls_cert_file.empty()) {
    auto cert = ReadFileToString(options.tls_cert_file);
    if (!cert.ok()) return cert.status();
    auto key = ReadFileToString(options.tls_key_file);
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *cert;
    ssl.pem_private_key = *key;
  }
  return grpc::CreateCustomChannel(options.server, grpc::SslCredentials(ssl), with_config);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options) {
  return MakeChannel(options, grpc::ChannelArguments());
}

void Authenticate(grpc::ClientContext& context, const std::string& token) {
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
}

}  // namespace gradacc
