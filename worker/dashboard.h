// Dashboard: the web page `gradacc dashboard` serves. It follows a server's
// WatchStatus stream (reconnecting when the server comes and goes), keeps
// every step record it has seen (from GetSteps, or from a ledger file after
// the job), and serves
//   /            the page (plain HTML + JS + SVG, nothing to build)
//   /api/status  {"connected": bool, "status": gradacc.v1.Status as JSON}
//   /api/steps   gradacc.v1.GetStepsResponse as JSON (all steps known)
// Thread-safe; owns its threads and HTTP server.
#ifndef GRADACC_WORKER_DASHBOARD_H_
#define GRADACC_WORKER_DASHBOARD_H_

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "worker/channel.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace gradacc {

class HttpServer;

struct DashboardOptions {
  std::string server;  // gRPC address of the gradacc server; may be down
  std::string listen = "127.0.0.1:8080";
  std::string ledger;  // optional ledger.jsonl to read steps from
  ConnectionOptions connection;  // TLS and token (its server is ignored)
};

class Dashboard {
 public:
  static absl::StatusOr<std::unique_ptr<Dashboard>> Start(const DashboardOptions& options);
  ~Dashboard();
  int port() const;

 private:
  Dashboard() = default;
  void FollowLoop();
  std::string StatusJson();
  std::string StepsJson();

  DashboardOptions options_;
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
// a step supersedes an earlier one).
absl::StatusOr<std::map<uint64_t, v1::StepRecord>> ReadLedger(const std::string& path);

}  // namespace gradacc

#endif  // GRADACC_WORKER_DASHBOARD_H_
