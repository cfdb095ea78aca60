#include "worker/cli/cli.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <initializer_list>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/files.h"
#include "common/grpc_status.h"
#include "common/usage.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "worker/cli/status_format.h"
#include "common/channel.h"
#include "worker/dashboard/dashboard.h"

namespace gradacc {
namespace {

// `flags` after the ones every command that calls the server reads.
std::vector<std::string> ServerFlags(std::initializer_list<const char*> flags) {
  std::vector<std::string> all = {"server", "tls_ca", "tls_cert", "tls_key", "token_file"};
  all.insert(all.end(), flags.begin(), flags.end());
  return all;
}

int Fail(absl::string_view what, const absl::Status& status) {
  absl::FPrintF(stderr, "gradacc: %s: %s\n", what, status.message());
  return 2;
}

// A channel to the server (TLS and token as the options say), or the exit
// code of the failure.
struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::string token;
  int error = 0;
};

Connection Connect(const CliOptions& o) {
  ConnectionOptions c;
  c.server = o.server;
  c.tls_ca_file = o.tls_ca;
  c.tls_cert_file = o.tls_cert;
  c.tls_key_file = o.tls_key;
  Connection out;
  if (absl::Status s = LoadToken(o.token_file, c); !s.ok()) {
    out.error = Fail("token", s);
    return out;
  }
  auto channel = MakeChannel(c);
  if (!channel.ok()) {
    out.error = Fail(absl::StrCat("connection to ", o.server), channel.status());
    return out;
  }
  out.channel = *channel;
  out.token = c.token;
  return out;
}

void Prepare(grpc::ClientContext& ctx, const Connection& c, const CliOptions& o) {
  Authenticate(ctx, c.token);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(o.timeout_s)));
}

std::string Json(const google::protobuf::Message& m, bool whitespace) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = whitespace;
  options.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, options);
  return json;
}

std::string Render(const v1::Status& s, const CliOptions& o) {
  return o.json ? Json(s, !o.watch) + "\n" : FormatStatusTable(s);
}

int ServerFailure(absl::string_view what, const CliOptions& o, const grpc::Status& s) {
  return Fail(absl::StrCat(what, " ", o.server), FromGrpcStatus(s));
}

int Watch(const Connection& c, const CliOptions& o) {
  auto stub = v1::ControlPlane::NewStub(c.channel);
  grpc::ClientContext ctx;
  Authenticate(ctx, c.token);
  auto reader = stub->WatchStatus(&ctx, v1::WatchStatusRequest());
  v1::Status status;
  const bool tty = isatty(fileno(stdout)) && !o.json;
  while (reader->Read(&status)) {
    if (tty) std::fputs("\033[H\033[2J", stdout);
    std::fputs(Render(status, o).c_str(), stdout);
    if (!tty && !o.json) std::fputs("\n", stdout);
    std::fflush(stdout);
    if (status.state() == v1::JOB_STATE_DONE) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (!s.ok() && s.error_code() != grpc::StatusCode::CANCELLED) return ServerFailure("watch of", o, s);
  return 0;
}

int StatusCommand(const CliOptions& o) {
  const Connection c = Connect(o);
  if (c.error != 0) return c.error;
  if (o.watch) return Watch(c, o);
  auto stub = v1::ControlPlane::NewStub(c.channel);
  grpc::ClientContext ctx;
  Prepare(ctx, c, o);
  v1::Status status;
  grpc::Status s = stub->GetStatus(&ctx, v1::GetStatusRequest(), &status);
  if (!s.ok()) return ServerFailure("status of", o, s);
  std::fputs(Render(status, o).c_str(), stdout);
  return 0;
}

int StepsCommand(const CliOptions& o) {
  const Connection c = Connect(o);
  if (c.error != 0) return c.error;
  auto stub = v1::ControlPlane::NewStub(c.channel);
  grpc::ClientContext ctx;
  Prepare(ctx, c, o);
  v1::GetStepsRequest request;
  request.set_from_step(o.from);
  request.set_to_step(o.to);
  v1::GetStepsResponse response;
  grpc::Status s = stub->GetSteps(&ctx, request, &response);
  if (!s.ok()) return ServerFailure("steps of", o, s);
  std::fputs(o.json ? (Json(response, true) + "\n").c_str() : FormatStepsTable(response).c_str(), stdout);
  return 0;
}

void WritePortFile(const std::string& path, int port) { (void)WriteFileAtomically(path, absl::StrCat(port, "\n")); }

int DashboardCommand(const CliOptions& o) {
  // Taken with sigwait below; blocked before any thread starts so that all
  // inherit the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  DashboardOptions options;
  options.server = o.server;
  options.connection.tls_ca_file = o.tls_ca;
  options.connection.tls_cert_file = o.tls_cert;
  options.connection.tls_key_file = o.tls_key;
  if (absl::Status s = LoadToken(o.token_file, options.connection); !s.ok()) return Fail("token", s);
  options.listen = o.listen;
  options.ledger = o.ledger;
  options.https_cert_file = o.https_cert;
  options.https_key_file = o.https_key;
  options.allow_remote_plaintext = o.allow_remote_plaintext;
  auto dashboard = Dashboard::Start(options);
  if (!dashboard.ok()) return Fail("dashboard", dashboard.status());
  const char* scheme = o.https_cert.empty() ? "http" : "https";
  absl::FPrintF(stderr, "gradacc: dashboard of %s on %s://127.0.0.1:%d/ (Ctrl-C stops it)\n", options.server, scheme,
                (*dashboard)->port());
  if (!options.connection.token.empty()) {
    absl::FPrintF(stderr,
                  "gradacc: the dashboard's data needs the token it uses for the server: open "
                  "%s://127.0.0.1:%d/#token=<token>\n",
                  scheme, (*dashboard)->port());
  }
  if (!o.port_file.empty()) WritePortFile(o.port_file, (*dashboard)->port());
  int signal = 0;
  sigwait(&signals, &signal);
  return 0;
}

int HealthCommand(const CliOptions& o) {
  const Connection c = Connect(o);
  if (c.error != 0) return c.error;
  auto stub = grpc::health::v1::Health::NewStub(c.channel);
  grpc::ClientContext ctx;
  Prepare(ctx, c, o);
  grpc::health::v1::HealthCheckRequest request;
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = stub->Check(&ctx, request, &response);
  if (!s.ok()) return ServerFailure("health of", o, s);
  const bool serving = response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return serving ? 0 : 1;
}

const CliCommand* FindCommand(absl::string_view name) {
  for (const CliCommand& c : CliCommands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

std::string CommandHelp(const CliCommand& c) {
  return FlagsHelp(absl::StrCat(c.summary, "\n\nusage: ", c.usage), c.flags);
}

}  // namespace

const std::vector<CliCommand>& CliCommands() {
  static const auto* commands = new std::vector<CliCommand>{
      {"status", "gradacc status --server=ADDR [--json] [--watch]", "How training is going: a table, or JSON.",
       ServerFlags({"json", "watch", "timeout_s"})},
      {"steps", "gradacc steps --server=ADDR [--from=N --to=M] [--json]", "The step ledger: what went into each step.",
       ServerFlags({"from", "to", "json", "timeout_s"})},
      {"dashboard",
       "gradacc dashboard --server=ADDR --listen=HOST:PORT [--ledger=FILE] [--https_cert=PEM --https_key=PEM]",
       "A live web page of the run (also of a finished run, from its ledger).",
       ServerFlags({"listen", "ledger", "port_file", "https_cert", "https_key", "allow_remote_plaintext"})},
      {"health", "gradacc health --server=ADDR", "Exits 0 only when the server is SERVING.",
       ServerFlags({"timeout_s"})},
  };
  return *commands;
}

std::string CliUsage() {
  std::string usage = "gradacc <command> [flags]   (gradacc <command> --help: that command's flags)\n";
  for (const CliCommand& c : CliCommands()) absl::StrAppendFormat(&usage, "  %-10s %s\n", c.name, c.summary);
  return usage;
}

std::optional<std::string> CliHelp(int argc, char** argv) {
  const CliCommand* command = argc > 1 ? FindCommand(argv[1]) : nullptr;
  if (argc > 1 && absl::string_view(argv[1]) == "help") {
    const CliCommand* about = argc > 2 ? FindCommand(argv[2]) : nullptr;
    return about != nullptr ? CommandHelp(*about) : FlagsHelp(CliUsage());
  }
  if (!HelpRequested(argc, argv)) return std::nullopt;
  return command != nullptr ? CommandHelp(*command) : FlagsHelp(CliUsage());
}

int RunCli(const std::vector<std::string>& args, const CliOptions& options) {
  if (args.size() != 2) {
    absl::FPrintF(stderr, "%s", CliUsage());
    return 2;
  }
  const std::string& command = args[1];
  if (command == "status") return StatusCommand(options);
  if (command == "steps") return StepsCommand(options);
  if (command == "dashboard") return DashboardCommand(options);
  if (command == "health") return HealthCommand(options);
  absl::FPrintF(stderr, "gradacc: unknown command '%s'\n%s", command, CliUsage());
  return 2;
}

}  // namespace gradacc
