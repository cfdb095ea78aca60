// Dashboard: the web page `gradacc dashboard` serves. It follows a server's
// WatchStatus stream (reconnecting when the server comes and goes), keeps
// every step record it has seen (from GetSteps, or from a ledger file after
// the job), and serves
//   /            the page (dashboard.html, compiled in; plain HTML + JS + SVG)
//   /api/status  {"connected": bool, "status": gradacc.v1.Status as JSON,
//                 "display": the labels of StatusDisplay (worker/cli/status_format.h)}
//   /api/steps   gradacc.v1.GetStepsResponse as JSON (all steps known)
// Over HTTPS when given a certificate; plain HTTP only on loopback unless
// told. Only for requests whose Host header names a host it listens on, and, when
// it holds a token for its server, /api/... only with that token
// (worker/dashboard/dashboard_guard.h).
// Thread-safe; owns its threads and HTTP server.
#ifndef GRADACC_WORKER_DASHBOARD_DASHBOARD_H_
#define GRADACC_WORKER_DASHBOARD_DASHBOARD_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "common/channel.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace gradacc {

class DashboardGuard;
class HttpServer;

struct DashboardOptions {
  std::string server;  // gRPC address of the gradacc server; may be down; empty: ledger only
  std::string listen = "127.0.0.1:8080";
  std::string ledger;            // optional ledger.jsonl to read steps from
  ConnectionOptions connection;  // TLS and token (its server is ignored)
  // Serve HTTPS (only) with this PEM certificate chain and key.
  std::string https_cert_file;
  std::string https_key_file;
  // Without HTTPS, serve a non-loopback `listen` anyway (else refused).
  bool allow_remote_plaintext = false;
};

// The page, as compiled in from dashboard.html.
absl::string_view DashboardPage();

class Dashboard {
 public:
  // What the dashboard has seen, for WaitUntil.
  struct View {
    bool connected = false;              // following the server's WatchStatus now
    const v1::Status* status = nullptr;  // the newest status; null before the first
    uint64_t steps = 0;                  // step records known
  };

  static absl::StatusOr<std::unique_ptr<Dashboard>> Start(const DashboardOptions& options);
  ~Dashboard();
  int port() const;

  // Blocks until `ready` holds for what the dashboard has seen, or `timeout`
  // passes; returns whether it held. `ready` runs under the dashboard's
  // lock: it must not call back into the dashboard.
  bool WaitUntil(absl::FunctionRef<bool(const View&)> ready, absl::Duration timeout);

 private:
  Dashboard() = default;
  void FollowLoop();
  std::string StatusJson();
  std::string StepsJson();
  View ViewLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  DashboardOptions options_;  // constant after Start
  std::unique_ptr<DashboardGuard> guard_;  // constant after Start
  std::unique_ptr<HttpServer> http_;
  std::thread follower_;
  Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* watch_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool connected_ ABSL_GUARDED_BY(mu_) = false;
  bool have_status_ ABSL_GUARDED_BY(mu_) = false;
  v1::Status status_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, v1::StepRecord> steps_ ABSL_GUARDED_BY(mu_);
};

// Reads a ledger file (JSON lines of gradacc.v1.StepRecord; a later line for
// a step supersedes an earlier one). A line that is not a record (cut short
// by a kill) is skipped; DATA_LOSS when no line is one.
absl::StatusOr<std::map<uint64_t, v1::StepRecord>> ReadLedger(const std::string& path);

}  // namespace gradacc

#endif  // GRADACC_WORKER_DASHBOARD_DASHBOARD_H_
