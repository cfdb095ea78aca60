#include "worker/dashboard/dashboard_guard.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <unistd.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "common/auth.h"

namespace gradacc {
namespace {

// The host of "host:port", "[v6]:port", "host" or "[v6]", lower case,
// without brackets or a trailing dot.
std::string HostOf(absl::string_view hostport) {
  absl::string_view host = absl::StripAsciiWhitespace(hostport);
  if (absl::StartsWith(host, "[")) {
    const size_t close = host.find(']');
    host = close == absl::string_view::npos ? host.substr(1) : host.substr(1, close - 1);
  } else if (host.find(':') == host.rfind(':') && host.find(':') != absl::string_view::npos) {
    host = host.substr(0, host.find(':'));
  }
  host = absl::StripSuffix(host, ".");
  return absl::AsciiStrToLower(host);
}

bool Wildcard(const std::string& host) { return host.empty() || host == "0.0.0.0" || host == "::"; }

// This machine's name and interface addresses (a wildcard listener is
// reached through any of them).
void AddLocalNames(std::set<std::string>& hosts) {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) == 0 && name[0] != '\0') hosts.insert(HostOf(name));
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr) continue;
    char text[INET6_ADDRSTRLEN] = {};
    const int family = a->ifa_addr->sa_family;
    const void* addr = nullptr;
    if (family == AF_INET) addr = &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr;
    if (family == AF_INET6) addr = &reinterpret_cast<sockaddr_in6*>(a->ifa_addr)->sin6_addr;
    if (addr != nullptr && ::inet_ntop(family, addr, text, sizeof(text)) != nullptr) hosts.insert(HostOf(text));
  }
  ::freeifaddrs(list);
}

HttpResponse Refusal(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

}  // namespace

DashboardGuard::DashboardGuard(const std::string& listen, std::string token)
    : hosts_{"localhost", "127.0.0.1", "::1"}, token_(std::move(token)) {
  // civetweb also takes a bare port ("8080"): every interface.
  const bool bare_port = listen.find(':') == std::string::npos;
  const std::string host = bare_port ? "" : HostOf(listen);
  if (Wildcard(host)) {
    AddLocalNames(hosts_);
  } else {
    hosts_.insert(host);
  }
}

bool DashboardGuard::HostAllowed(absl::string_view host_header) const {
  return !host_header.empty() && hosts_.count(HostOf(host_header)) > 0;
}

std::optional<HttpResponse> DashboardGuard::Check(const HttpRequest& request, bool data) const {
  if (!HostAllowed(request.host)) {
    return Refusal(403, "forbidden: the Host header names a host this dashboard does not serve\n");
  }
  if (data && !token_.empty()) {
    absl::string_view given = request.authorization;
    if (!absl::ConsumePrefix(&given, "Bearer ") || !ConstantTimeEquals(given, token_)) {
      return Refusal(401,
                     "unauthorized: the server requires tokens; open the dashboard as http://HOST:PORT/#token=<your "
                     "token> (the page sends it as 'Authorization: Bearer')\n");
    }
  }
  return std::nullopt;
}

}  // namespace gradacc
