#include "tests/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace gradacc::testing {

HttpReply HttpGet(int port, const std::string& path, const std::vector<std::pair<std::string, std::string>>& headers) {
  HttpReply reply;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return reply;
  }
  std::string req = absl::StrCat("GET ", path, " HTTP/1.1\r\nConnection: close\r\n");
  bool host = false;
  for (const auto& [name, value] : headers) {
    host = host || absl::AsciiStrToLower(name) == "host";
    absl::StrAppend(&req, name, ": ", value, "\r\n");
  }
  if (!host) req += "Host: 127.0.0.1\r\n";
  req += "\r\n";
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  ::close(fd);
  // "HTTP/1.1 200 OK\r\n..."
  const size_t space = out.find(' ');
  if (space != std::string::npos) (void)absl::SimpleAtoi(out.substr(space + 1, 3), &reply.status);
  const size_t body = out.find("\r\n\r\n");
  if (body != std::string::npos) reply.body = out.substr(body + 4);
  return reply;
}

}  // namespace gradacc::testing
