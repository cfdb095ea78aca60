// HttpServer: a small embedded HTTP server (civetweb, from Debian) for the
// server's Prometheus /metrics and the CLI's dashboard. Handlers get the
// path and query string and return a whole response; civetweb does the
// HTTP. Thread-safe: handlers run on civetweb's worker threads.
#ifndef GRADACC_COMMON_HTTP_SERVER_H_
#define GRADACC_COMMON_HTTP_SERVER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

struct mg_context;
struct mg_connection;

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

class HttpServer {
 public:
  using Handler = std::function<HttpResponse(const HttpRequest&)>;

  // `listen` is HOST:PORT; port 0 picks a free one (see port()).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen, Handler handler);
  ~HttpServer();

  int port() const { return port_; }

 private:
  HttpServer() = default;
  static int Dispatch(::mg_connection* conn, void* self);

  Handler handler_;
  ::mg_context* context_ = nullptr;
  int port_ = 0;
};

// The value of `key` in a query string ("a=1&b=2"), or "".
std::string QueryValue(const std::string& query, const std::string& key);

}  // namespace gradacc

#endif  // GRADACC_COMMON_HTTP_SERVER_H_
