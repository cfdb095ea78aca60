#include "common/http_server.h"

#include <civetweb.h>
#include <openssl/ssl.h>

#include <cstdio>
#include <mutex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/civetweb_tls.h"

namespace gradacc {
namespace {

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    default:
      return "Error";
  }
}

// civetweb's errors (a port in use, a failed handshake) on stderr; they
// name no secret.
int LogCivetweb(const mg_connection*, const char* message) {
  std::fprintf(stderr, "civetweb: %s\n", message);
  return 1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen, Handler handler) {
  HttpServerOptions options;
  options.listen = listen;
  return Start(options, std::move(handler));
}

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options, Handler handler) {
  static std::once_flag init;
  std::call_once(init, [] { mg_init_library(0); });
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->handler_ = std::move(handler);
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("an HTTPS certificate and its key go together");
  }
  std::string ports = options.listen;
  mg_callbacks callbacks{};
  callbacks.log_message = &LogCivetweb;
  if (!options.tls_cert_file.empty()) {
    if (absl::Status tls = EnableCivetwebTls(); !tls.ok()) return tls;
    auto ctx = NewServerSslContext(options.tls_cert_file, options.tls_key_file);
    if (!ctx.ok()) return ctx.status();
    server->ssl_ctx_ = *ctx;
    ports += "s";  // civetweb's mark of a TLS-only port
    callbacks.external_ssl_ctx = &HttpServer::ExternalSslContext;
  }
  const char* mg_options[] = {"listening_ports", ports.c_str(), "num_threads", "4", "request_timeout_ms", "10000",
                              nullptr};
  server->context_ = mg_start(&callbacks, server.get(), mg_options);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve ", server->scheme(), " on '", options.listen, "'"));
  }
  mg_set_request_handler(server->context_, "/", &HttpServer::Dispatch, server.get());
  mg_server_port mg_ports[4];
  const int n = mg_get_server_ports(server->context_, 4, mg_ports);
  if (n <= 0) return absl::InternalError("civetweb reports no listening port");
  server->port_ = mg_ports[0].port;
  return server;
}

int HttpServer::ExternalSslContext(void** ssl_ctx, void* self) {
  *ssl_ctx = static_cast<HttpServer*>(self)->ssl_ctx_;
  return 1;
}

HttpServer::~HttpServer() {
  if (context_ != nullptr) mg_stop(context_);
  if (ssl_ctx_ != nullptr) SSL_CTX_free(ssl_ctx_);
}

int HttpServer::Dispatch(mg_connection* conn, void* self) {
  const mg_request_info* info = mg_get_request_info(conn);
  HttpRequest request;
  request.path = info->local_uri != nullptr ? info->local_uri : "/";
  request.query = info->query_string != nullptr ? info->query_string : "";
  const char* host = mg_get_header(conn, "Host");
  request.host = host != nullptr ? host : "";
  const char* authorization = mg_get_header(conn, "Authorization");
  request.authorization = authorization != nullptr ? authorization : "";
  HttpResponse response = static_cast<HttpServer*>(self)->handler_(request);
  const char* reason = ReasonPhrase(response.status);
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
            "%sConnection: close\r\n\r\n",
            response.status, reason, response.content_type.c_str(), response.body.size(),
            response.status == 401 ? "WWW-Authenticate: Bearer realm=\"gradacc\"\r\n" : "");
  mg_write(conn, response.body.data(), response.body.size());
  return response.status;
}

bool IsLoopbackListen(const std::string& listen) {
  const std::string host = listen.substr(0, listen.rfind(':'));
  return host == "127.0.0.1" || host == "localhost" || host == "[::1]" || absl::StartsWith(host, "127.");
}

std::string QueryValue(const std::string& query, const std::string& key) {
  for (absl::string_view part : absl::StrSplit(query, '&')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    if (kv.first == key) return std::string(kv.second);
  }
  return "";
}

}  // namespace gradacc
