#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "common/http_server.h"
#include "common/status_macros.h"
#include "common/wire.h"
#include "server/metrics.h"
#include "server/rpc/control_plane_service.h"
#include "server/rpc/data_plane_service.h"
#include "server/rpc/shard_router.h"
#include "common/tsan.h"
#include "server/shard_exchange.h"
#include "common/channel.h"

namespace gradacc {

namespace {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& options) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (options.tls_cert_file.empty()) {
    if (!options.tls_client_ca_file.empty()) return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert");
    if (!IsLoopbackListen(options.listen) && !options.allow_remote_plaintext) {
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

// Plaintext beyond loopback only when told (every port: gRPC, /metrics, the
// shards' channels).
absl::Status CheckPlaintext(const ServerOptions& options, const std::string& address, const char* what) {
  if (!options.tls_cert_file.empty() || IsLoopbackListen(address) || options.allow_remote_plaintext) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "refusing plaintext ", what, " '", address,
      "': without --tls_cert/--tls_key only loopback addresses are used; pass --allow_remote_plaintext for a "
      "trusted network"));
}

// How this shard reaches its peers: over TLS when it serves TLS (verifying
// them with --shard_tls_ca, presenting its own certificate for mutual TLS),
// with the shard token when tokens are on.
absl::StatusOr<ConnectionOptions> PeerConnection(const ServerOptions& options) {
  const TokenSet& tokens = options.tokens;
  if (tokens.enabled() && (tokens.shard.empty() || tokens.worker.empty())) {
    return absl::FailedPreconditionError(
        "a sharded server with tokens needs --worker_token_file and --shard_token_file (the token shards present "
        "to each other)");
  }
  if (!tokens.shard.empty() && (tokens.shard == tokens.worker || tokens.shard == tokens.reader)) {
    return absl::InvalidArgumentError("the shard token must differ from the worker and reader tokens");
  }
  ConnectionOptions c;
  c.token = tokens.shard;
  for (const std::string& peer : options.shard_peers) {
    if (absl::Status plain = CheckPlaintext(options, peer, "channel to shard"); !plain.ok()) return plain;
  }
  if (options.tls_cert_file.empty()) return c;
  c.tls_ca_file = options.shard_tls_ca_file.empty() ? options.tls_client_ca_file : options.shard_tls_ca_file;
  if (c.tls_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "a sharded server with TLS needs --shard_tls_ca (or --tls_client_ca): the CA that signed the other shards' "
        "certificates");
  }
  c.tls_cert_file = options.tls_cert_file;
  c.tls_key_file = options.tls_key_file;
  return c;
}

// /metrics over HTTPS when the server has a certificate; with tokens on,
// only for a reader or worker token (401 otherwise).
absl::StatusOr<std::unique_ptr<HttpServer>> StartMetrics(const ServerOptions& options,
                                                          std::vector<Trainer*> trainers) {
  HttpServerOptions http;
  http.listen = options.metrics_listen;
  http.tls_cert_file = options.tls_cert_file;
  http.tls_key_file = options.tls_key_file;
  const TokenSet tokens = options.tokens;
  return HttpServer::Start(http, [trainers = std::move(trainers), tokens](const HttpRequest& request) {
    HttpResponse response;
    const Role role = RoleOf(tokens, request.authorization);
    if (tokens.enabled() && role != Role::kReader && role != Role::kWorker) {
      response.status = 401;
      response.body = "gradacc-server: /metrics needs the reader (or worker) token: Authorization: Bearer <token>\n";
    } else if (request.path == "/metrics") {
      response.content_type = "text/plain; version=0.0.4; charset=utf-8";
      std::vector<ShardMetrics> shards;
      for (Trainer* trainer : trainers) shards.push_back({trainer->GetStatus(), trainer->Counters()});
      response.body = RenderPrometheus(shards);
    } else {
      response.status = 404;
      response.body = "gradacc-server: metrics are at /metrics\n";
    }
    return response;
  });
}

// A file of shard `shard`'s own when one process serves several shards.
std::string PerShardFile(const std::string& path, uint32_t shard) {
  return path.empty() ? path : absl::StrCat(path, ".shard-", shard);
}

}  // namespace

absl::Status GradaccServer::AddCore(const v1::JobSpec& spec, const ServerOptions& options, uint32_t shard,
                                    const InitialParametersSource& initial) {
  TrainerOptions trainer_options = options.trainer;
  trainer_options.shard = shard;
  if (options.shards.size() > 1) {
    const TrainerOptions& o = options.trainer;
    if (!o.checkpoint_dir.empty()) {
      trainer_options.checkpoint_dir = absl::StrCat(o.checkpoint_dir, "/shard-", shard);
      GRADACC_RETURN_IF_ERROR(MakePrivateDirectory(o.checkpoint_dir));
    }
    trainer_options.ledger_path = o.ledger_path == o.checkpoint_dir + "/ledger.jsonl"
                                      ? trainer_options.checkpoint_dir + "/ledger.jsonl"
                                      : PerShardFile(o.ledger_path, shard);
    trainer_options.final_params_path = PerShardFile(o.final_params_path, shard);
  }
  Core core;
  if (trainer_options.num_shards > 1) {
    if (options.shard_peers.size() != trainer_options.num_shards) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--shard_peers must list all %d shards' addresses in shard order", trainer_options.num_shards));
    }
    GRADACC_ASSIGN_OR_RETURN(ConnectionOptions connection, PeerConnection(options));
    const ShardExchange* same_process = cores_.empty() ? nullptr : cores_.front().exchange.get();
    GRADACC_ASSIGN_OR_RETURN(core.exchange, ShardExchange::Create(shard, options.shard_peers,
                                                                  spec.job_id().empty() ? "default" : spec.job_id(),
                                                                  connection, options.shard_timeout, same_process));
    trainer_options.exchange = core.exchange.get();
  }
  GRADACC_ASSIGN_OR_RETURN(core.trainer, Trainer::Create(spec, trainer_options, initial));
  cores_.push_back(std::move(core));
  return absl::OkStatus();
}

std::vector<Trainer*> GradaccServer::trainers() {
  std::vector<Trainer*> all;
  for (Core& c : cores_) all.push_back(c.trainer.get());
  return all;
}

absl::StatusOr<std::unique_ptr<GradaccServer>> GradaccServer::Start(const v1::JobSpec& spec,
                                                                    const ServerOptions& options) {
  auto credentials = Credentials(options);
  if (!credentials.ok()) return credentials.status();
  if (!options.metrics_listen.empty()) {
    GRADACC_RETURN_IF_ERROR(CheckPlaintext(options, options.metrics_listen, "metrics on"));
  }
  std::vector<uint32_t> shards = options.shards;
  if (shards.empty()) shards.push_back(options.trainer.shard);
  for (uint32_t shard : shards) {
    if (shard >= std::max<uint32_t>(1, options.trainer.num_shards)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("shard %d of a job of %d shards (--shard, --num_shards)", shard, options.trainer.num_shards));
    }
    if (std::count(shards.begin(), shards.end(), shard) > 1) {
      return absl::InvalidArgumentError(absl::StrFormat("--shard names shard %d twice", shard));
    }
  }
  std::unique_ptr<GradaccServer> server(new GradaccServer());
  // The whole model's initial parameters, computed once for all the shards
  // served here, by the first that does not resume from a checkpoint (each
  // takes its part; when all resume, nobody computes them).
  std::shared_ptr<const FloatBuffer> initial;
  InitialParametersSource source;
  if (shards.size() > 1) {
    source = [&spec, &initial]() -> absl::StatusOr<std::shared_ptr<const FloatBuffer>> {
      if (initial == nullptr) {
        GRADACC_ASSIGN_OR_RETURN(FloatBuffer computed, InitialParameters(spec));
        initial = std::make_shared<const FloatBuffer>(std::move(computed));
      }
      return initial;
    };
  }
  std::vector<ServedShard> served;
  for (uint32_t shard : shards) {
    GRADACC_RETURN_IF_ERROR(server->AddCore(spec, options, shard, source));
    served.push_back({shard, server->cores_.back().trainer.get(), server->cores_.back().exchange.get()});
  }
  initial.reset();
  server->router_ = std::make_unique<ShardRouter>(std::move(served));
  server->data_plane_ = std::make_unique<DataPlaneServiceImpl>(server->router_.get(), options.tokens);
  server->control_plane_ = std::make_unique<ControlPlaneServiceImpl>(server->router_.get(), options.tokens);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, *credentials, &server->port_);
  builder.RegisterService(server->data_plane_.get());
  builder.RegisterService(server->control_plane_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // Let a push stream run ahead of the handler by several chunks (gRPC
  // takes the first value of an argument given twice: ours first).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, options.grpc_stream_window_bytes);
  for (const auto& [name, value] : BulkTransferChannelArgs()) builder.AddChannelArgument(name, value);
  // Probing the bandwidth-delay product grows the server's receive windows:
  // needed to fill a link across hosts (without it a 16M window over 1 Gbit
  // links took 3.94 s instead of 2.78 s), but on loopback they reach tens of
  // MB per stream, and a push stream paused for its turn in the running sum
  // (server/accumulator.h) holds its window in server memory: at 16M and 16
  // gRPC workers on one host 1.5 GB with it, 0.53 GB without it (1 MiB
  // windows; tests/bench/README.md). --grpc_bdp_probe=auto (the default)
  // probes unless the server listens on loopback only.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, options.grpc_bdp_probe ? 1 : 0);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on '", options.listen, "'"));
  }
  if (!options.metrics_listen.empty()) {
    auto http = StartMetrics(options, server->trainers());
    if (!http.ok()) return http.status();
    server->metrics_ = std::move(*http);
  }
  return server;
}

int GradaccServer::metrics_port() const { return metrics_ != nullptr ? metrics_->port() : 0; }

GradaccServer::~GradaccServer() {
  metrics_.reset();
  Shutdown(absl::ZeroDuration());
  // The Trainers go last: reactors hold raw pointers to them until the
  // server is fully shut down.
  server_.reset();
  TsanAcquire(&kTsanServerRpcsDone);  // every reactor is done (common/tsan.h)
}

void GradaccServer::StopPeers() {
  for (Core& c : cores_) {
    if (c.exchange != nullptr) c.exchange->Stop();
    // A step waiting for its checkpoint gives up too (it is not published).
    c.trainer->StopRetrying();
  }
}

void GradaccServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  std::call_once(shutdown_once_, [&] {
    StopPeers();
    for (Core& c : cores_) c.trainer->Shutdown();
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  });
}

void GradaccServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace gradacc
