// How clients reach a gradacc server: plaintext or TLS (optionally with a
// client certificate for mutual TLS), a bearer token sent with every call,
// and gRPC's own retry of idempotent unary calls on UNAVAILABLE (the service
// config below). Shared by the client library, the CLI and the dashboard.
// Free functions; thread-safe.
#ifndef GRADACC_COMMON_CHANNEL_H_
#define GRADACC_COMMON_CHANNEL_H_

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
  std::string token;  // bearer token (never logged; see ValidateSecret in common/auth.h)
};

// Reads the token from `token_file` or $GRADACC_TOKEN into `options`; a token
// that cannot travel as a header is an error that does not show it.
absl::Status LoadToken(const std::string& token_file, ConnectionOptions& options);

// The channel's service config: Join, Leave, AttachSharedMemory, GetStatus
// and ReportMetric (idempotent) are retried by gRPC itself when they fail
// with UNAVAILABLE (a server restarting, a connection reset), with
// exponential backoff, before the client library's own retry sees them.
const std::string& ClientServiceConfigJson();

// A channel with ClientServiceConfigJson() set in `args` (a copy). Checks the
// token (InvalidArgument without showing it) and the TLS files.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options,
                                                           const grpc::ChannelArguments& args);
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options);

// Adds "authorization: Bearer <token>" when a token is set.
void Authenticate(grpc::ClientContext& context, const std::string& token);

}  // namespace gradacc

#endif  // GRADACC_COMMON_CHANNEL_H_
