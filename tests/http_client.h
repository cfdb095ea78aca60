// A plain HTTP/1.1 GET on loopback for tests (the dashboard, /metrics), with
// the headers a test chooses, over TCP or TLS; bounded by 10 s socket
// timeouts.
#ifndef GRADACC_TESTS_HTTP_CLIENT_H_
#define GRADACC_TESTS_HTTP_CLIENT_H_

#include <string>
#include <utility>
#include <vector>

namespace gradacc::testing {

struct HttpReply {
  int status = 0;       // 0: no answer
  bool tls = false;     // HttpsGet: the TLS handshake succeeded
  std::string headers;  // the status line and headers
  std::string body;
};

// GET `path` from 127.0.0.1:`port`. Sends "Host: 127.0.0.1" unless
// `headers` has a Host of its own.
HttpReply HttpGet(int port, const std::string& path,
                  const std::vector<std::pair<std::string, std::string>>& headers = {});

// The same over TLS, verifying the server's certificate (for IP 127.0.0.1)
// against the PEM CA `ca_file`.
HttpReply HttpsGet(int port, const std::string& path, const std::string& ca_file,
                   const std::vector<std::pair<std::string, std::string>>& headers = {});

}  // namespace gradacc::testing

#endif  // GRADACC_TESTS_HTTP_CLIENT_H_
