// Security against the real server: bearer tokens (worker and read-only),
// TLS and mutual TLS with certificates made here by openssl, the loopback
// default without TLS, and no secret in any log line.
#include <fstream>

#include <grpcpp/grpcpp.h>

#include <signal.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"
#include "tests/test_pki.h"
#include "common/channel.h"

namespace gradacc {
namespace {

using testing::kReaderToken;
using testing::kWorkerToken;
using testing::Pki;
using testing::ReadFile;
using testing::RunCommand;
using testing::ServerProcess;
using testing::Subprocess;

constexpr char kJob[] = R"pb(
  job_id: "secure"
  model { tensors { name: "w" shape: [16, 8] } tensors { name: "b" shape: [8] } }
  optimizer { kind: KIND_SGD lr: 0.1 }
  window { num_workers: 2 micro_batches: 1 }
  total_steps: 5
)pb";

std::vector<std::string> TokenFlags() {
  const Pki& pki = Pki::Get();
  return {"--worker_token_file=" + pki.Path("worker.token"), "--reader_token_file=" + pki.Path("reader.token")};
}

std::vector<std::string> TlsServerFlags() {
  const Pki& pki = Pki::Get();
  return {"--tls_cert=" + pki.Path("server.pem"), "--tls_key=" + pki.Path("server.key"),
          "--tls_client_ca=" + pki.Path("ca.pem")};
}

// A first contribution header for worker 0 (rejected or accepted before any
// data is needed).
grpc::Status PushHeader(const std::shared_ptr<grpc::Channel>& channel, const std::string& token) {
  auto stub = v1::DataPlane::NewStub(channel);
  grpc::ClientContext ctx;
  Authenticate(ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::PushResponse resp;
  auto writer = stub->Push(&ctx, &resp);
  v1::PushRequest req;
  req.mutable_header()->set_worker(0);
  req.mutable_header()->set_samples(1);
  req.mutable_header()->set_num_elements(136);
  writer->Write(req);
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status GetStatus(const std::shared_ptr<grpc::Channel>& channel, const std::string& token) {
  auto stub = v1::ControlPlane::NewStub(channel);
  grpc::ClientContext ctx;
  Authenticate(ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::Status s;
  return stub->GetStatus(&ctx, v1::GetStatusRequest(), &s);
}

grpc::Status Join(const std::shared_ptr<grpc::Channel>& channel, const std::string& token) {
  auto stub = v1::DataPlane::NewStub(channel);
  grpc::ClientContext ctx;
  Authenticate(ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::JoinRequest r;
  v1::JoinResponse resp;
  return stub->Join(&ctx, r, &resp);
}

// Every line any process wrote must be free of the secrets.
void ExpectNoSecrets(const std::string& logs) {
  const Pki& pki = Pki::Get();
  EXPECT_EQ(logs.find(kWorkerToken), std::string::npos);
  EXPECT_EQ(logs.find(kReaderToken), std::string::npos);
  EXPECT_EQ(logs.find("not-a-token"), std::string::npos);
  for (const char* key : {"server.key", "client.key", "ca.key"}) {
    for (absl::string_view line : absl::StrSplit(ReadFile(pki.Path(key)), '\n')) {
      if (line.size() > 20 && line.find("-----") == absl::string_view::npos) {
        EXPECT_EQ(logs.find(std::string(line)), std::string::npos) << "a line of " << key << " was logged";
      }
    }
  }
}

TEST(SecurityTest, TokensAuthenticateAndAuthorize) {
  const Pki& pki = Pki::Get();
  const std::string dir = testing::MakeTempDir("tokens");
  std::ofstream(dir + "/job.textproto") << kJob;
  std::vector<std::string> flags = TokenFlags();
  flags.push_back("--job=" + dir + "/job.textproto");
  auto server = ServerProcess::Start(dir, flags);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());

  EXPECT_EQ(Join(channel, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(GetStatus(channel, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(PushHeader(channel, "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(GetStatus(channel, "not-a-token").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(GetStatus(channel, kReaderToken).ok());
  EXPECT_EQ(Join(channel, kReaderToken).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(PushHeader(channel, kReaderToken).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(GetStatus(channel, kWorkerToken).ok());

  std::string logs;
  auto no_token = RunCommand({GRADACC_CLI_BIN, "status", "--server=" + (*server)->address()});
  EXPECT_NE(no_token.exit_code, 0);
  EXPECT_NE(no_token.output.find("missing bearer token"), std::string::npos) << no_token.output;
  auto reader = RunCommand({GRADACC_CLI_BIN, "status", "--server=" + (*server)->address(),
                            "--token_file=" + pki.Path("reader.token")});
  EXPECT_EQ(reader.exit_code, 0) << reader.output;
  logs += no_token.output + reader.output;

  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < 2; ++k) {
    auto p = Subprocess::Start({GRADACC_TEST_CLIENT_BIN, "--server=" + (*server)->address(),
                                absl::StrCat("--worker=", k), "--micro_batches=1",
                                "--token_file=" + pki.Path("worker.token")},
                               absl::StrCat(dir, "/worker", k, ".log"));
    ASSERT_TRUE(p.ok());
    workers.push_back(std::move(*p));
  }
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(workers[k]->Wait(absl::Seconds(60)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
    logs += ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
  }
  // A reader may not train.
  auto intruder = RunCommand({GRADACC_TEST_CLIENT_BIN, "--server=" + (*server)->address(), "--worker=0",
                              "--token_file=" + pki.Path("reader.token")});
  EXPECT_NE(intruder.exit_code, 0);
  EXPECT_NE(intruder.output.find("PERMISSION_DENIED"), std::string::npos) << intruder.output;
  logs += intruder.output;
  channel.reset();
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  logs += (*server)->log();
  EXPECT_NE(logs.find("bearer tokens required"), std::string::npos);
  ExpectNoSecrets(logs);
}

TEST(SecurityTest, MutualTlsAdmitsOnlyOurCa) {
  const Pki& pki = Pki::Get();
  const std::string dir = testing::MakeTempDir("mtls");
  std::ofstream(dir + "/job.textproto") << kJob;
  std::vector<std::string> flags = TlsServerFlags();
  for (const auto& f : TokenFlags()) flags.push_back(f);
  flags.push_back("--job=" + dir + "/job.textproto");
  auto server = ServerProcess::Start(dir, flags);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();

  ConnectionOptions ours{address, pki.Path("ca.pem"), pki.Path("client.pem"), pki.Path("client.key"), ""};
  ConnectionOptions theirs{address, pki.Path("ca.pem"), pki.Path("intruder.pem"), pki.Path("intruder.key"), ""};
  ConnectionOptions no_cert{address, pki.Path("ca.pem"), "", "", ""};
  EXPECT_TRUE(GetStatus(*MakeChannel(ours), kReaderToken).ok());
  const grpc::Status other_ca = GetStatus(*MakeChannel(theirs), kReaderToken);
  EXPECT_FALSE(other_ca.ok());
  EXPECT_EQ(other_ca.error_code(), grpc::StatusCode::UNAVAILABLE) << other_ca.error_message();
  EXPECT_FALSE(GetStatus(*MakeChannel(no_cert), kReaderToken).ok());
  // Plaintext to the TLS port.
  const grpc::Status plain = GetStatus(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()), kReaderToken);
  EXPECT_EQ(plain.error_code(), grpc::StatusCode::UNAVAILABLE) << plain.error_message();

  std::string logs;
  const std::vector<std::string> tls = {"--tls_ca=" + pki.Path("ca.pem"), "--tls_cert=" + pki.Path("client.pem"),
                                        "--tls_key=" + pki.Path("client.key")};
  std::vector<std::string> health = {GRADACC_CLI_BIN, "health", "--server=" + address};
  health.insert(health.end(), tls.begin(), tls.end());
  auto h = RunCommand(health);
  EXPECT_EQ(h.exit_code, 0) << h.output;
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < 2; ++k) {
    std::vector<std::string> argv = {GRADACC_TEST_CLIENT_BIN, "--server=" + address, absl::StrCat("--worker=", k),
                                     "--micro_batches=1", "--token_file=" + pki.Path("worker.token")};
    argv.insert(argv.end(), tls.begin(), tls.end());
    auto p = Subprocess::Start(argv, absl::StrCat(dir, "/worker", k, ".log"));
    ASSERT_TRUE(p.ok());
    workers.push_back(std::move(*p));
  }
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(workers[k]->Wait(absl::Seconds(60)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
    logs += ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
  }
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  logs += (*server)->log() + h.output;
  EXPECT_NE(logs.find("mutual TLS"), std::string::npos);
  ExpectNoSecrets(logs);
}

TEST(SecurityTest, PlaintextServesLoopbackOnlyUnlessTold) {
  const std::string dir = testing::MakeTempDir("plain");
  auto refused = RunCommand({GRADACC_SERVER_BIN, "--listen=0.0.0.0:0", "--port_file=" + dir + "/p"},
                            absl::Seconds(20));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("listens on loopback only"), std::string::npos) << refused.output;
  auto server = ServerProcess::Start(dir, {});
  ASSERT_TRUE(server.ok());
  EXPECT_NE((*server)->log().find("plaintext (no TLS), loopback only"), std::string::npos) << (*server)->log();
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

// A token that cannot travel as a gRPC header (a second line, a control or
// non-ASCII byte) made the worker and the CLI abort (SIGABRT) with gRPC
// printing the token; every binary now refuses it when loading it, names the
// file and never shows its content.
TEST(SecurityTest, UnsendableTokenFilesAreRefusedWithoutShowingThem) {
  testing::AllowMpiAsRoot();  // gradacc-worker below runs as MPI's singleton
  const std::string dir = testing::MakeTempDir("bad_tokens");
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"two_lines", "SECRETLINEONE\nSECRETLINETWO\n"},
      {"control", std::string("SECRETCTRL\x07") + "SECRETCTRL\n"},
      {"non_ascii", "SECRETUTF\xc3\xa9SECRETUTF\n"},
  };
  for (const auto& [name, content] : bad) {
    const std::string file = dir + "/" + name + ".token";
    std::ofstream(file, std::ios::binary) << content;
    const std::vector<std::vector<std::string>> runs = {
        {GRADACC_SERVER_BIN, "--listen=127.0.0.1:0", "--worker_token_file=" + file},
        {GRADACC_SERVER_BIN, "--listen=127.0.0.1:0", "--reader_token_file=" + file},
        {GRADACC_CLI_BIN, "status", "--server=" + address, "--token_file=" + file},
        {GRADACC_CLI_BIN, "health", "--server=" + address, "--token_file=" + file},
        {GRADACC_CLI_BIN, "dashboard", "--server=" + address, "--listen=127.0.0.1:0", "--token_file=" + file},
        {GRADACC_TEST_CLIENT_BIN, "--server=" + address, "--worker=0", "--token_file=" + file},
        {GRADACC_WORKER_BIN, "--server=" + address, "--train_limit=100", "--token_file=" + file},
    };
    for (const auto& argv : runs) {
      SCOPED_TRACE(absl::StrCat(name, ": ", absl::StrJoin(argv, " ")));
      auto run = RunCommand(argv, absl::Seconds(60));
      EXPECT_NE(run.exit_code, 0) << run.output;
      EXPECT_NE(run.exit_code, 128 + SIGABRT) << run.output;
      EXPECT_NE(run.output.find(file), std::string::npos) << "the error does not name the file:\n" << run.output;
      EXPECT_EQ(run.output.find("SECRET"), std::string::npos) << "the token was shown:\n" << run.output;
    }
  }
  // Nothing reached the server's job.
  EXPECT_EQ(testing::CliStatus(address).contributions_accepted(), 0u);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

}  // namespace
}  // namespace gradacc
