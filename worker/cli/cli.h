// The `gradacc` command line: status, steps, dashboard and health, each with
// its own usage and flags (`gradacc <command> --help`). The flags themselves
// are defined in worker/cli_main.cc, which fills CliOptions from them.
// Functions run on the calling thread (the dashboard keeps it until SIGTERM
// or SIGINT).
#ifndef GRADACC_WORKER_CLI_CLI_H_
#define GRADACC_WORKER_CLI_CLI_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace gradacc {

struct CliOptions {
  std::string server = "127.0.0.1:7070";
  bool json = false;
  bool watch = false;
  double timeout_s = 10;
  std::string tls_ca, tls_cert, tls_key;
  std::string token_file;  // empty: $GRADACC_TOKEN
  int64_t from = 0, to = 0;
  std::string listen = "127.0.0.1:8080";
  std::string ledger;
  std::string port_file;
  std::string https_cert, https_key;  // dashboard: serve HTTPS
  bool allow_remote_plaintext = false;
};

struct CliCommand {
  const char* name;
  const char* usage;               // "gradacc status --server=ADDR [--json] [--watch]"
  const char* summary;             // what it does, one line
  std::vector<std::string> flags;  // the flags it reads, in the order help lists them
};

// Every command, in the order `gradacc --help` lists them.
const std::vector<CliCommand>& CliCommands();
// The program's usage message: every command's usage and summary.
std::string CliUsage();

// The help the command line asks for, if it asks: `gradacc --help`,
// `gradacc <command> --help` or `gradacc help [<command>]`; nullopt when it
// does not ask for help.
std::optional<std::string> CliHelp(int argc, char** argv);

// Runs `args` (the positional arguments left after flag parsing, argv[0]
// first). Returns the exit code: 0 success, 1 `health` not serving, 2 an
// error (printed to stderr).
int RunCli(const std::vector<std::string>& args, const CliOptions& options);

}  // namespace gradacc

#endif  // GRADACC_WORKER_CLI_CLI_H_
