// DashboardGuard: who may read the dashboard. Every request must name, in
// its Host header, a host the dashboard listens on — its listening address,
// or for a wildcard address this machine's name and addresses — or
// localhost, 127.0.0.1 or [::1]: a page of another site whose name was
// rebound to this address (DNS rebinding) names its own host and is refused
// (403). When the dashboard holds a token for its server (the server
// requires tokens), its data (/api/...) also needs that token
// ("Authorization: Bearer <token>", compared in constant time; 401 without).
// Immutable after construction; thread-safe.
#ifndef GRADACC_WORKER_DASHBOARD_DASHBOARD_GUARD_H_
#define GRADACC_WORKER_DASHBOARD_DASHBOARD_GUARD_H_

#include <optional>
#include <set>
#include <string>

#include "absl/strings/string_view.h"
#include "common/http_server.h"

namespace gradacc {

class DashboardGuard {
 public:
  // `listen`: the dashboard's HOST:PORT; `token`: empty = no token needed.
  DashboardGuard(const std::string& listen, std::string token);

  // nullopt when `request` may be answered, else the refusal to send.
  // `data`: the request reads training data (needs the token).
  std::optional<HttpResponse> Check(const HttpRequest& request, bool data) const;
  // Whether a Host header value ("name", "name:port", "[v6]:port") names
  // one of the allowed hosts.
  bool HostAllowed(absl::string_view host_header) const;
  bool token_required() const { return !token_.empty(); }

 private:
  std::set<std::string> hosts_;  // lower case, no port, IPv6 without brackets
  const std::string token_;
};

}  // namespace gradacc

#endif  // GRADACC_WORKER_DASHBOARD_DASHBOARD_GUARD_H_
