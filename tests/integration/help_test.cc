// `--help` of every binary and every `gradacc` subcommand: exit 0, and each
// lists its flags with their meaning and default (Abseil's own --help
// printed "No flags matched." for all of them, and subcommands exited 1).
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::RunCommand;

struct HelpCase {
  std::vector<std::string> argv;
  std::vector<std::string> present;  // flags (with meaning or default) that must appear
  std::vector<std::string> absent;   // another command's flags
};

void ExpectHelp(const HelpCase& c) {
  SCOPED_TRACE(absl::StrJoin(c.argv, " "));
  auto run = RunCommand(c.argv, absl::Seconds(30));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_FALSE(absl::StrContains(run.output, "No flags matched")) << run.output;
  for (const std::string& text : c.present)
    EXPECT_TRUE(absl::StrContains(run.output, text)) << text << " in:\n" << run.output;
  for (const std::string& text : c.absent)
    EXPECT_FALSE(absl::StrContains(run.output, text)) << text << " in:\n" << run.output;
}

TEST(HelpTest, TheServerListsItsFlags) {
  ExpectHelp(
      {{GRADACC_SERVER_BIN, "--help"},
       {"--listen  (default: \"127.0.0.1:7070\")", "host:port to serve on", "--checkpoint_dir", "--worker_token_file",
        "--shared_memory_dir  (default: \"/dev/shm\")", "--checkpoint_every  (default: 1)",
        "--data_plan  (default: false)", "--max_workers"},
       {"--flagfile"}});
}

TEST(HelpTest, TheWorkerListsItsFlagsWithoutMpirun) {
  ExpectHelp({{GRADACC_WORKER_BIN, "--help"},
              {"mpirun -np N gradacc-worker", "--server  (default: \"\")", "--device  (default: \"cpu\")",
               "cpu or cuda", "--epochs", "--hierarchical  (default: false)", "--window_timeout_s  (default: 1800)",
               "mpirun --enable-recovery", "--rank  (default: -1)", "--world_size  (default: 0)"},
              {}});
}

TEST(HelpTest, TheTestClientListsItsFlags) {
  ExpectHelp({{GRADACC_TEST_CLIENT_BIN, "--help"}, {"--worker  (default: 0)", "--micro_batches", "--token_file"}, {}});
}

TEST(HelpTest, TheCliListsItsCommandsAndFlags) {
  ExpectHelp({{GRADACC_CLI_BIN, "--help"},
              {"status", "steps", "dashboard", "health", "--server  (default: \"127.0.0.1:7070\")", "--listen"},
              {}});
  ExpectHelp({{GRADACC_CLI_BIN, "-h"}, {"dashboard", "--json"}, {}});
}

TEST(HelpTest, EverySubcommandHasItsOwnHelp) {
  const std::vector<std::string> connection = {"--server  (default: \"127.0.0.1:7070\")", "--token_file", "--tls_ca"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), connection.begin(), connection.end());
    return extra;
  };
  ExpectHelp(
      {{GRADACC_CLI_BIN, "status", "--help"},
       with({"gradacc status --server=ADDR", "--json  (default: false)", "--watch", "--timeout_s  (default: 10)"}),
       {"--listen", "--from"}});
  ExpectHelp({{GRADACC_CLI_BIN, "steps", "--help"},
              with({"--from  (default: 0)", "--to", "first step"}),
              {"--listen", "--watch"}});
  ExpectHelp(
      {{GRADACC_CLI_BIN, "dashboard", "--help"},
       with({"--listen  (default: \"127.0.0.1:8080\")", "--ledger", "--port_file", "HOST:PORT to serve the page"}),
       {"--watch", "--from"}});
  ExpectHelp({{GRADACC_CLI_BIN, "health", "--help"}, with({"SERVING", "--timeout_s"}), {"--listen", "--json"}});
  // `gradacc help <command>` is the same, and flags before --help are fine.
  ExpectHelp({{GRADACC_CLI_BIN, "help", "dashboard"}, {"--ledger"}, {"--watch"}});
  ExpectHelp({{GRADACC_CLI_BIN, "dashboard", "--server=x:1", "--help"}, {"--ledger"}, {"--watch"}});
}

TEST(HelpTest, AnUnknownCommandIsStillAnError) {
  auto run = RunCommand({GRADACC_CLI_BIN, "statuss"}, absl::Seconds(30));
  EXPECT_EQ(run.exit_code, 2) << run.output;
  EXPECT_TRUE(absl::StrContains(run.output, "unknown command 'statuss'")) << run.output;
}

}  // namespace
}  // namespace gradacc
