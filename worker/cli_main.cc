// gradacc: the command-line client. Parses flags and runs a command of
// worker/cli/cli.h; `gradacc --help` and `gradacc <command> --help` list the
// flags.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/mutex.h"
#include "common/usage.h"
#include "worker/cli/cli.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7070", "gradacc server address HOST:PORT");
ABSL_FLAG(bool, json, false, "print protobuf's JSON mapping (gradacc.v1.Status, gradacc.v1.GetStepsResponse)");
ABSL_FLAG(bool, watch, false, "status: keep printing on every step (WatchStatus) until the job ends");
ABSL_FLAG(double, timeout_s, 10, "deadline of one call, in seconds");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the server's certificate (enables TLS)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, token_file, "", "file holding the bearer token; default: $GRADACC_TOKEN");
ABSL_FLAG(int64_t, from, 0, "steps: first step (0 = the oldest kept)");
ABSL_FLAG(int64_t, to, 0, "steps: last step (0 = the newest)");
ABSL_FLAG(std::string, listen, "127.0.0.1:8080", "dashboard: HOST:PORT to serve the page on (port 0: a free one)");
ABSL_FLAG(std::string, ledger, "", "dashboard: also read steps from this ledger.jsonl (works after the job)");
ABSL_FLAG(std::string, port_file, "", "dashboard: write the bound port here once serving");
ABSL_FLAG(std::string, https_cert, "", "dashboard: serve HTTPS (only) with this PEM certificate chain");
ABSL_FLAG(std::string, https_key, "", "dashboard: PEM private key of --https_cert");
ABSL_FLAG(bool, allow_remote_plaintext, false,
          "dashboard: serve a non-loopback --listen address without --https_cert (trusted networks only)");

int main(int argc, char** argv) {
  gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
  gradacc::InitUsage(gradacc::CliUsage());
  if (auto help = gradacc::CliHelp(argc, argv); help.has_value()) {
    std::fputs(help->c_str(), stdout);
    return 0;
  }
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  gradacc::CliOptions o;
  o.server = absl::GetFlag(FLAGS_server);
  o.json = absl::GetFlag(FLAGS_json);
  o.watch = absl::GetFlag(FLAGS_watch);
  o.timeout_s = absl::GetFlag(FLAGS_timeout_s);
  o.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.token_file = absl::GetFlag(FLAGS_token_file);
  o.from = absl::GetFlag(FLAGS_from);
  o.to = absl::GetFlag(FLAGS_to);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.ledger = absl::GetFlag(FLAGS_ledger);
  o.port_file = absl::GetFlag(FLAGS_port_file);
  o.https_cert = absl::GetFlag(FLAGS_https_cert);
  o.https_key = absl::GetFlag(FLAGS_https_key);
  o.allow_remote_plaintext = absl::GetFlag(FLAGS_allow_remote_plaintext);
  return gradacc::RunCli(std::vector<std::string>(positional.begin(), positional.end()), o);
}
