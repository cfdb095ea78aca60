#include "tests/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gradacc::testing {
namespace {

// A connected socket to 127.0.0.1:`port` with a 10 s receive timeout, or -1.
int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

std::string Request(const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers) {
  std::string req = absl::StrCat("GET ", path, " HTTP/1.1\r\nConnection: close\r\n");
  bool host = false;
  for (const auto& [name, value] : headers) {
    host = host || absl::AsciiStrToLower(name) == "host";
    absl::StrAppend(&req, name, ": ", value, "\r\n");
  }
  if (!host) req += "Host: 127.0.0.1\r\n";
  return req + "\r\n";
}

HttpReply Parse(const std::string& out) {
  HttpReply reply;
  // "HTTP/1.1 200 OK\r\n..."
  const size_t space = out.find(' ');
  if (space != std::string::npos) (void)absl::SimpleAtoi(out.substr(space + 1, 3), &reply.status);
  const size_t body = out.find("\r\n\r\n");
  if (body != std::string::npos) {
    reply.headers = out.substr(0, body);
    reply.body = out.substr(body + 4);
  }
  return reply;
}

}  // namespace

HttpReply HttpGet(int port, const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers) {
  const int fd = Connect(port);
  if (fd < 0) return HttpReply();
  const std::string req = Request(path, headers);
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  ::close(fd);
  return Parse(out);
}

HttpReply HttpsGet(int port, const std::string& path, const std::string& ca_file,
                   const std::vector<std::pair<std::string, std::string>>& headers) {
  HttpReply reply;
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr || SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
    SSL_CTX_free(ctx);
    return reply;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  const int fd = Connect(port);
  SSL* ssl = fd < 0 ? nullptr : SSL_new(ctx);
  if (ssl != nullptr) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), "127.0.0.1");
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) == 1) {
      reply.tls = true;
      const std::string req = Request(path, headers);
      SSL_write(ssl, req.data(), static_cast<int>(req.size()));
      std::string out;
      char buf[8192];
      int n;
      while ((n = SSL_read(ssl, buf, sizeof(buf))) > 0) out.append(buf, n);
      const HttpReply parsed = Parse(out);
      reply.status = parsed.status;
      reply.headers = parsed.headers;
      reply.body = parsed.body;
    }
    SSL_free(ssl);
  }
  if (fd >= 0) ::close(fd);
  SSL_CTX_free(ctx);
  return reply;
}

}  // namespace gradacc::testing
