// HttpServer: a small embedded HTTP server (civetweb, from Debian) for the
// server's Prometheus /metrics and the CLI's dashboard. Handlers get the
// path and query string and return a whole response; civetweb does the
// HTTP, and TLS when a certificate is given (HTTPS only on that port; see
// common/civetweb_tls.h for how that shares OpenSSL with gRPC).
// Thread-safe: handlers run on civetweb's worker threads.
#ifndef GRADACC_COMMON_HTTP_SERVER_H_
#define GRADACC_COMMON_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;
struct ssl_ctx_st;

namespace gradacc {

struct HttpRequest {
  std::string path;
  std::string query;          // without '?'
  std::string host;           // the Host header ("" when absent)
  std::string authorization;  // the Authorization header ("" when absent)
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

struct HttpServerOptions {
  std::string listen;  // HOST:PORT; port 0 picks a free one (see port())
  // PEM certificate chain and its private key: serve HTTPS (TLS 1.2+)
  // instead of HTTP. Both or neither.
  std::string tls_cert_file;
  std::string tls_key_file;
};

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options, Handler handler);
  // Plain HTTP on `listen`.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen, Handler handler);
  ~HttpServer();

  int port() const { return port_; }
  bool tls() const { return ssl_ctx_ != nullptr; }
  // "http" or "https".
  const char* scheme() const { return tls() ? "https" : "http"; }

 private:
  HttpServer() = default;
  static int Dispatch(::mg_connection* conn, void* self);
  // civetweb's external_ssl_ctx: hands over ssl_ctx_, which it keeps (and
  // which ~HttpServer frees after mg_stop).
  static int ExternalSslContext(void** ssl_ctx, void* self);

  Handler handler_;
  ::ssl_ctx_st* ssl_ctx_ = nullptr;  // owned; null for plain HTTP
  ::mg_context* context_ = nullptr;
  int port_ = 0;
};

// Whether a HOST:PORT listens on loopback only (127.x, localhost, [::1]).
bool IsLoopbackListen(const std::string& listen);

// The value of `key` in a query string ("a=1&b=2"), or "".
std::string QueryValue(const std::string& query, const std::string& key);

}  // namespace gradacc

#endif  // GRADACC_COMMON_HTTP_SERVER_H_
