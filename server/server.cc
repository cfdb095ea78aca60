#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/http_server.h"
#include "server/metrics.h"
#include "server/service.h"

namespace gradacc {

absl::StatusOr<std::unique_ptr<GradaccServer>> GradaccServer::Start(const v1::JobSpec& spec,
                                                                    const ServerOptions& options) {
  auto trainer = Trainer::Create(spec, options.trainer);
  if (!trainer.ok()) return trainer.status();
  std::unique_ptr<GradaccServer> server(new GradaccServer());
  server->trainer_ = std::move(*trainer);
  server->data_plane_ = std::make_unique<DataPlaneServiceImpl>(server->trainer_.get());
  server->control_plane_ = std::make_unique<ControlPlaneServiceImpl>(server->trainer_.get());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->data_plane_.get());
  builder.RegisterService(server->control_plane_.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
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

void GradaccServer::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;
  std::call_once(shutdown_once_, [&] {
    trainer_->Shutdown();
    if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  });
}

void GradaccServer::Wait() {
  if (server_ != nullptr) server_->Wait();
}

}  // namespace gradacc
