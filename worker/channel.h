// How clients reach a gradacc server: plaintext or TLS (optionally with a
// client certificate for mutual TLS), and a bearer token sent with every
// call. Shared by the client library, the CLI and the dashboard.
#ifndef GRADACC_WORKER_CHANNEL_H_
#define GRADACC_WORKER_CHANNEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace grpc {
class Channel;
class ChannelArguments;
class ClientContext;
}  // namespace grpc

namespace gradacc {

struct ConnectionOptions {
  std::string server;         // HOST:PORT
  std::string tls_ca_file;    // PEM CA that signed the server's certificate; enables TLS
  std::string tls_cert_file;  // client certificate (mutual TLS)
  std::string tls_key_file;
  std::string token;          // bearer token (never logged)
};

// Reads the token from `token_file` or $GRADACC_TOKEN into `options`.
absl::Status LoadToken(const std::string& token_file, ConnectionOptions& options);

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options,
                                                           const grpc::ChannelArguments& args);
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options);

// Adds "authorization: Bearer <token>" when a token is set.
void Authenticate(grpc::ClientContext& context, const std::string& token);

}  // namespace gradacc

#endif  // GRADACC_WORKER_CHANNEL_H_
