// gradacc: the command-line client.
//   gradacc status --server=ADDR [--json] [--watch]
//   gradacc health --server=ADDR [--timeout_s=N]
#include <grpcpp/grpcpp.h>

#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "worker/channel.h"
#include "worker/dashboard.h"
#include "worker/status_format.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7070", "gradacc server address host:port");
ABSL_FLAG(bool, json, false, "status: print protobuf's JSON mapping of gradacc.v1.Status");
ABSL_FLAG(bool, watch, false, "status: keep printing on every step (WatchStatus) until the job ends");
ABSL_FLAG(double, timeout_s, 10, "deadline of one call (for --watch: of connecting)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the server's certificate (enables TLS)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, token_file, "", "file holding the bearer token; default: $GRADACC_TOKEN");
ABSL_FLAG(int64_t, from, 0, "steps: first step (0 = the oldest kept)");
ABSL_FLAG(int64_t, to, 0, "steps: last step (0 = the newest)");
ABSL_FLAG(std::string, listen, "127.0.0.1:8080", "dashboard: HOST:PORT to serve the page on (port 0: a free one)");
ABSL_FLAG(std::string, ledger, "", "dashboard: also read steps from this ledger.jsonl (works after the job)");
ABSL_FLAG(std::string, port_file, "", "dashboard: write the bound port here once serving");

namespace {

constexpr char kUsage[] =
    "gradacc <command> [flags]\n"
    "  status --server=ADDR [--json] [--watch]          how training is going\n"
    "  steps --server=ADDR [--from=N --to=M] [--json]   the step ledger\n"
    "  dashboard --server=ADDR --listen=HOST:PORT [--ledger=FILE]   a live web page\n"
    "  health --server=ADDR                             exit 0 only when the server is serving";

gradacc::ConnectionOptions Connection() {
  gradacc::ConnectionOptions c;
  c.server = absl::GetFlag(FLAGS_server);
  c.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  c.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  c.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  if (absl::Status s = gradacc::LoadToken(absl::GetFlag(FLAGS_token_file), c); !s.ok()) {
    absl::FPrintF(stderr, "gradacc: %s\n", s.message());
    std::exit(2);
  }
  return c;
}

std::shared_ptr<grpc::Channel> Channel() {
  auto channel = gradacc::MakeChannel(Connection());
  if (!channel.ok()) {
    absl::FPrintF(stderr, "gradacc: %s\n", channel.status().message());
    std::exit(2);
  }
  return *channel;
}

const std::string& Token() {
  static const std::string* token = new std::string(Connection().token);
  return *token;
}

absl::Time Deadline() { return absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_timeout_s)); }

std::string Render(const gradacc::v1::Status& s) {
  if (!absl::GetFlag(FLAGS_json)) return gradacc::FormatStatusTable(s);
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = !absl::GetFlag(FLAGS_watch);
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(s, &json, options);
  return json + "\n";
}

int Fail(const std::string& what, const grpc::Status& s) {
  absl::FPrintF(stderr, "gradacc: %s %s: %s (%d)\n", what, absl::GetFlag(FLAGS_server), s.error_message(),
                s.error_code());
  return 2;
}

int Status() {
  auto stub = gradacc::v1::ControlPlane::NewStub(Channel());
  if (!absl::GetFlag(FLAGS_watch)) {
    grpc::ClientContext ctx;
    gradacc::Authenticate(ctx, Token());
    ctx.set_deadline(absl::ToChronoTime(Deadline()));
    gradacc::v1::Status status;
    grpc::Status s = stub->GetStatus(&ctx, gradacc::v1::GetStatusRequest(), &status);
    if (!s.ok()) return Fail("status of", s);
    std::fputs(Render(status).c_str(), stdout);
    return 0;
  }
  grpc::ClientContext ctx;
  gradacc::Authenticate(ctx, Token());
  auto reader = stub->WatchStatus(&ctx, gradacc::v1::WatchStatusRequest());
  gradacc::v1::Status status;
  const bool tty = isatty(fileno(stdout)) && !absl::GetFlag(FLAGS_json);
  while (reader->Read(&status)) {
    if (tty) std::fputs("\033[H\033[2J", stdout);
    std::fputs(Render(status).c_str(), stdout);
    if (!tty && !absl::GetFlag(FLAGS_json)) std::fputs("\n", stdout);
    std::fflush(stdout);
    if (status.state() == gradacc::v1::JOB_STATE_DONE) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok() && s.error_code() != grpc::StatusCode::CANCELLED) return Fail("watch of", s);
  return 0;
}

int Steps() {
  auto stub = gradacc::v1::ControlPlane::NewStub(Channel());
  grpc::ClientContext ctx;
  gradacc::Authenticate(ctx, Token());
  ctx.set_deadline(absl::ToChronoTime(Deadline()));
  gradacc::v1::GetStepsRequest request;
  request.set_from_step(absl::GetFlag(FLAGS_from));
  request.set_to_step(absl::GetFlag(FLAGS_to));
  gradacc::v1::GetStepsResponse response;
  grpc::Status s = stub->GetSteps(&ctx, request, &response);
  if (!s.ok()) return Fail("steps of", s);
  if (absl::GetFlag(FLAGS_json)) {
    std::string json;
    google::protobuf::util::JsonPrintOptions options;
    options.add_whitespace = true;
    options.always_print_primitive_fields = true;
    (void)google::protobuf::util::MessageToJsonString(response, &json, options);
    std::printf("%s\n", json.c_str());
  } else {
    std::fputs(gradacc::FormatStepsTable(response).c_str(), stdout);
  }
  return 0;
}

int Dashboard() {
  // Taken with sigwait below; blocked before any thread starts so that all
  // inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  gradacc::DashboardOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  options.connection = Connection();
  options.listen = absl::GetFlag(FLAGS_listen);
  options.ledger = absl::GetFlag(FLAGS_ledger);
  auto dashboard = gradacc::Dashboard::Start(options);
  if (!dashboard.ok()) {
    absl::FPrintF(stderr, "gradacc: dashboard: %s\n", dashboard.status().ToString());
    return 2;
  }
  absl::FPrintF(stderr, "gradacc: dashboard of %s on http://127.0.0.1:%d/ (Ctrl-C stops it)\n", options.server,
                (*dashboard)->port());
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    const std::string tmp = absl::GetFlag(FLAGS_port_file) + ".tmp";
    std::ofstream(tmp) << (*dashboard)->port() << "\n";
    std::rename(tmp.c_str(), absl::GetFlag(FLAGS_port_file).c_str());
  }
  int signal = 0;
  sigwait(&signals, &signal);
  return 0;
}

int Health() {
  auto stub = grpc::health::v1::Health::NewStub(Channel());
  grpc::ClientContext ctx;
  gradacc::Authenticate(ctx, Token());
  ctx.set_deadline(absl::ToChronoTime(Deadline()));
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = stub->Check(&ctx, request, &response);
  if (!s.ok()) return Fail("health of", s);
  const bool serving = response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  std::printf("%s\n", serving ? "SERVING" : grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return serving ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    absl::FPrintF(stderr, "%s\n", kUsage);
    return 2;
  }
  const std::string command = args[1];
  if (command == "status") return Status();
  if (command == "health") return Health();
  if (command == "steps") return Steps();
  if (command == "dashboard") return Dashboard();
  absl::FPrintF(stderr, "gradacc: unknown command '%s'\n%s\n", command, kUsage);
  return 2;
}
