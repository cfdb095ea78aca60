// What the server and the dashboard expose, against the real binaries: the
// files a server writes (checkpoints, ledger, final parameters) are private
// to its user, a token file others may read is warned about, and the
// dashboard's data needs the server's token and its own Host header (DNS
// rebinding). Ports chosen by the OS; every wait bounded.
#include <sys/stat.h>

#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::HttpGet;
using testing::ReadFile;
using testing::ServerProcess;
using testing::Subprocess;

constexpr char kJob[] = R"pb(
  job_id: "exposure"
  model { tensors { name: "w" shape: [16, 8] } tensors { name: "b" shape: [8] } }
  optimizer { kind: KIND_SGD lr: 0.1 }
  window { num_workers: 2 micro_batches: 1 }
  total_steps: 4
)pb";

constexpr char kWorkerToken[] = "wkr-3c9d0e8a71b64f25a8c7d2e1f0b9a6c4";
constexpr char kReaderToken[] = "rdr-7e2a5c1d09f84b36b1e4a8d7c3f6e902";

int ModeOf(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return -1;
  return st.st_mode & 07777;
}

std::string Octal(int mode) { return absl::StrFormat("%04o", mode); }

std::string WriteToken(const std::string& dir, const std::string& name, const std::string& token, int mode) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << token << "\n";
  ::chmod(path.c_str(), mode);
  return path;
}

TEST(ServerFilesTest, CheckpointsLedgerAndFinalParametersArePrivate) {
  const std::string dir = testing::MakeTempDir("private_files");
  std::ofstream(dir + "/job.textproto") << kJob;
  // The usual umask: what the server makes private, it makes so itself.
  const mode_t old_umask = ::umask(022);
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--checkpoint_dir=" + dir + "/ckpt",
                                           "--output=" + dir + "/final.safetensors"});
  ::umask(old_umask);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < 2; ++k) workers.push_back(testing::StartTestClient(dir, (*server)->address(), k));
  for (int k = 0; k < 2; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(60)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  ASSERT_EQ((*server)->Stop(), std::optional<int>(0));
  EXPECT_EQ(Octal(ModeOf(dir + "/ckpt")), "0700");
  EXPECT_EQ(Octal(ModeOf(dir + "/ckpt/ledger.jsonl")), "0600");
  EXPECT_EQ(Octal(ModeOf(dir + "/ckpt/JOB")), "0600");
  EXPECT_EQ(Octal(ModeOf(dir + "/final.safetensors")), "0600");
  const std::string ckpt = absl::StrFormat("%s/ckpt/ckpt-%020d", dir, 4);
  EXPECT_EQ(Octal(ModeOf(ckpt)), "0700");
  for (const char* file : {"params.safetensors", "state.binpb", "MANIFEST"}) {
    EXPECT_EQ(Octal(ModeOf(ckpt + "/" + file)), "0600") << file;
  }
}

TEST(TokenFileTest, ATokenFileOthersCanReadIsWarnedAboutByName) {
  const std::string dir = testing::MakeTempDir("token_modes");
  const std::string shared = WriteToken(dir, "shared.token", kWorkerToken, 0644);
  const std::string private_file = WriteToken(dir, "private.token", kReaderToken, 0600);
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--worker_token_file=" + shared,
                                           "--reader_token_file=" + private_file});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_EQ((*server)->Stop(), std::optional<int>(0));
  const std::string log = (*server)->log();
  EXPECT_NE(log.find("WARNING: secret file '" + shared + "'"), std::string::npos) << log;
  EXPECT_EQ(log.find(private_file), std::string::npos) << "a 0600 token file is not warned about\n" << log;
  EXPECT_EQ(log.find(kWorkerToken), std::string::npos) << "the token itself is never printed";
  // A client's token file too.
  auto status = testing::RunCommand({GRADACC_CLI_BIN, "status", "--server=127.0.0.1:1", "--timeout_s=1",
                                     "--token_file=" + shared});
  EXPECT_NE(status.output.find("WARNING: secret file '" + shared + "'"), std::string::npos) << status.output;
}

// A `gradacc dashboard` of `server` on a port of its own.
class DashboardProcess {
 public:
  DashboardProcess(const std::string& dir, const std::string& server, const std::string& token_file) {
    const std::string port_file = dir + "/dashboard.port";
    std::vector<std::string> argv = {GRADACC_CLI_BIN, "dashboard", "--server=" + server,
                                     "--listen=127.0.0.1:0", "--port_file=" + port_file};
    if (!token_file.empty()) argv.push_back("--token_file=" + token_file);
    auto p = Subprocess::Start(argv, dir + "/dashboard.log");
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return;
    process_ = std::move(*p);
    port_ = testing::WaitForPortFile(port_file, process_.get());
    if (port_ != 0) return;
    ADD_FAILURE() << "the dashboard did not start:\n" << ReadFile(dir + "/dashboard.log");
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<Subprocess> process_;  // SIGKILLed when it goes
  int port_ = 0;
};

TEST(DashboardAccessTest, DataNeedsTheServersTokenAndAHostItServes) {
  const std::string dir = testing::MakeTempDir("dashboard_access");
  const std::string worker = WriteToken(dir, "worker.token", kWorkerToken, 0600);
  const std::string reader = WriteToken(dir, "reader.token", kReaderToken, 0600);
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(
      dir, {"--job=" + dir + "/job.textproto", "--worker_token_file=" + worker, "--reader_token_file=" + reader});
  ASSERT_TRUE(server.ok()) << server.status();
  DashboardProcess dashboard(dir, (*server)->address(), reader);
  ASSERT_NE(dashboard.port(), 0);
  const int port = dashboard.port();
  const std::pair<std::string, std::string> bearer = {"Authorization", absl::StrCat("Bearer ", kReaderToken)};

  EXPECT_EQ(HttpGet(port, "/api/status").status, 401);
  EXPECT_EQ(HttpGet(port, "/api/steps").status, 401);
  EXPECT_EQ(HttpGet(port, "/api/status", {{"Authorization", "Bearer not-the-token"}}).status, 401);
  EXPECT_EQ(HttpGet(port, "/api/status", {{"Authorization", kReaderToken}}).status, 401) << "no Bearer scheme";
  // With the token: the status, once the dashboard follows the server.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  testing::HttpReply ok;
  do {
    ok = HttpGet(port, "/api/status", {bearer});
    if (absl::StrContains(ok.body, "\"connected\":true")) break;
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < give_up);
  EXPECT_EQ(ok.status, 200);
  EXPECT_TRUE(absl::StrContains(ok.body, "\"jobId\":\"exposure\"")) << ok.body;
  EXPECT_EQ(HttpGet(port, "/api/steps", {bearer}).status, 200);
  // The page itself holds no data: no token needed, but its own host.
  EXPECT_EQ(HttpGet(port, "/").status, 200);
  // Names it serves.
  for (const std::string& host : std::vector<std::string>{absl::StrCat("localhost:", port), absl::StrCat("127.0.0.1:", port),
                                 absl::StrCat("[::1]:", port), "LocalHost"}) {
    EXPECT_EQ(HttpGet(port, "/api/status", {bearer, {"Host", host}}).status, 200) << host;
  }
  // DNS rebinding: another site's name resolved to this address.
  for (const std::string& host : std::vector<std::string>{absl::StrCat("evil.example:", port), "evil.example", "127.0.0.1.evil.example",
                                 absl::StrCat("10.1.2.3:", port)}) {
    const testing::HttpReply r = HttpGet(port, "/api/status", {bearer, {"Host", host}});
    EXPECT_EQ(r.status, 403) << host;
    EXPECT_FALSE(absl::StrContains(r.body, "exposure")) << host;
    EXPECT_EQ(HttpGet(port, "/", {{"Host", host}}).status, 403) << host;
  }
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

TEST(DashboardAccessTest, WithoutTokensTheDataIsOpenOnlyToItsOwnHost) {
  const std::string dir = testing::MakeTempDir("dashboard_open");
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto"});
  ASSERT_TRUE(server.ok()) << server.status();
  DashboardProcess dashboard(dir, (*server)->address(), "");
  ASSERT_NE(dashboard.port(), 0);
  EXPECT_EQ(HttpGet(dashboard.port(), "/api/status").status, 200);
  EXPECT_EQ(HttpGet(dashboard.port(), "/api/status", {{"Host", "evil.example"}}).status, 403);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

}  // namespace
}  // namespace gradacc
