#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "common/http_server.h"
#include "common/wire.h"
#include "server/metrics.h"
#include "server/rpc/control_plane_service.h"
#include "server/rpc/data_plane_service.h"
#include "server/shard_exchange.h"

namespace gradacc {

namespace {

bool IsLoopback(const std::string& listen) {
  const std::string host = listen.substr(0, listen.rfind(':'));
  return host == "127.0.0.1" || host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.");
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& options) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (options.tls_cert_file.empty()) {
    if (!options.tls_client_ca_file.empty()) return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert");
    if (!IsLoopback(options.listen) && !options.allow_remote_plaintext) {
      return absl::FailedPreconditionError(absl::StrCat(
          "refusing to serve plaintext on '", options.listen,
          "': without --tls_cert/--tls_key the server listens on loopback only; pass "
          "--allow_remote_plaintext to serve other hosts without TLS on a trusted network"));
    }
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl;
  auto cert = ReadFileToString(options.tls_cert_file);
  if (!cert.ok()) return cert.status();
  auto key = ReadFileToString(options.tls_key_file);
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.tls_client_ca_file.empty()) {
    auto ca = ReadFileToString(options.tls_client_ca_file);
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<GradaccServer>> GradaccServer::Start(const v1::JobSpec& spec,
                                                                    const ServerOptions& options) {
  auto credentials = Credentials(options);
  if (!credentials.ok()) return credentials.status();
  std::unique_ptr<GradaccServer> server(new GradaccServer());
  TrainerOptions trainer_options = options.trainer;
  if (trainer_options.num_shards > 1) {
    if (options.shard_peers.size() != trainer_options.num_shards) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--shard_peers must list all %d shards' addresses in shard order", trainer_options.num_shards));
    }
    if (!options.tls_cert_file.empty()) {
      return absl::UnimplementedError("sharded servers talk to each other in plaintext; TLS between shards is not "
                                      "supported yet");
    }
    server->exchange_ = std::make_unique<ShardExchange>(trainer_options.shard, options.shard_peers,
                                                        spec.job_id().empty() ? "default" : spec.job_id(),
                                                        options.tokens.worker, options.shard_timeout);
    trainer_options.exchange = server->exchange_.get();
  }
  auto trainer = Trainer::Create(spec, trainer_options);
  if (!trainer.ok()) return trainer.status();
  server->trainer_ = std::move(*trainer);
  server->data_plane_ = std::make_unique<DataPlaneServiceImpl>(server->trainer_.get(), options.tokens);
  server->control_plane_ =
      std::make_unique<ControlPlaneServiceImpl>(server->trainer_.get(), options.tokens, server->exchange_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, &server->port_);
  builder.RegisterService(server->data_plane_.get());
  builder.RegisterService(server->control_plane_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // Let a push stream run ahead of the handler by several chunks.
  for (const auto& [name, value] : BulkTransferChannelArgs()) builder.AddChannelArgument(name, value);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen, "'"));
  }
  if (!options.metrics_listen.empty()) {
    Trainer* trainer = server->trainer_.get();
    auto http = HttpServer::Start(options.metrics_listen, [trainer](const HttpRequest& request) {
      HttpResponse response;
      if (request.path == "/metrics") {
        response.content_type = "text/plain; version=0.0.4; charset=utf-8";
        response.body = RenderPrometheus(trainer->GetStatus(), trainer->Counters());
      } else {
        response.status = 404;
        response.body = "gradacc-server: metrics are at /metrics\n";
      }
      return response;
    });
    if (!http.ok()) return http.status();
    server->metrics_ = std::move(*http);
  }
  return server;
}

int GradaccServer::metrics_port() const { return metrics_ != nullptr ? metrics_->port() : 0; }

GradaccServer::~GradaccServer() {
  metrics_.reset();
  Shutdown(absl::ZeroDuration());
  // The Trainer goes last: reactors hold raw pointers to it until the
  // server is fully shut down.
  server_.reset();
}

void GradaccServer::StopPeers() {
  if (exchange_ != nullptr) exchange_->Stop();
  // A step waiting for its checkpoint gives up too (it is not published).
  trainer_->StopRetrying();
}

void GradaccServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  std::call_once(shutdown_once_, [&] {
    StopPeers();
    trainer_->Shutdown();
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  });
}

void GradaccServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace gradacc
