// Security on every port, against the real binaries: sharded servers that
// talk to each other over mutual TLS with the shard token (and to workers
// over TLS with theirs) train exactly like one plaintext server, and refuse
// a peer without the right certificate or token; /metrics over HTTPS needs
// a token while gRPC's TLS keeps working in the same process; the dashboard
// over HTTPS; no plaintext beyond loopback unless told.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/subprocess.h"
#include "tests/test_pki.h"
#include "common/channel.h"

namespace gradacc {
namespace {

using testing::FreePort;
using testing::HttpGet;
using testing::HttpsGet;
using testing::kReaderToken;
using testing::kShardToken;
using testing::kWorkerToken;
using testing::Pki;
using testing::ReadFile;
using testing::RunCommand;
using testing::ServerProcess;
using testing::Subprocess;

constexpr char kShardedJob[] = R"pb(
  job_id: "secure-shards"
  model {
    tensors {
      name: "w"
      shape: [ 160, 33 ]
      init { uniform { low: -0.5 high: 0.5 } }
    }
    tensors {
      name: "b"
      shape: [ 33 ]
      init { constant: 0.1 }
    }
  }
  optimizer { kind: KIND_ADAM lr: 0.01 }
  window { num_workers: 2 micro_batches: 2 }
  clipping { max_norm: 1.0 }
  total_steps: 8
  seed: 11
)pb";
constexpr uint64_t kN = 160 * 33 + 33;
constexpr int kShards = 3;

constexpr char kSmallJob[] = R"pb(
  job_id: "secure-ports"
  model {
    tensors {
      name: "w"
      shape: [ 16, 8 ]
    }
    tensors {
      name: "b"
      shape: [ 8 ]
    }
  }
  optimizer { kind: KIND_SGD lr: 0.1 }
  window { num_workers: 2 micro_batches: 1 }
  total_steps: 5
)pb";


std::vector<std::string> ServerSecurityFlags() {
  const Pki& pki = Pki::Get();
  return {"--tls_cert=" + pki.Path("server.pem"), "--tls_key=" + pki.Path("server.key"),
          "--tls_client_ca=" + pki.Path("ca.pem"), "--worker_token_file=" + pki.Path("worker.token"),
          "--reader_token_file=" + pki.Path("reader.token")};
}

// A client's TLS flags (gradacc, gradacc_test_client): our CA, our client
// certificate.
std::vector<std::string> ClientTlsFlags() {
  const Pki& pki = Pki::Get();
  return {"--tls_ca=" + pki.Path("ca.pem"), "--tls_cert=" + pki.Path("client.pem"),
          "--tls_key=" + pki.Path("client.key")};
}

ConnectionOptions Mtls(const std::string& address, const std::string& cert = "client") {
  const Pki& pki = Pki::Get();
  return ConnectionOptions{address, pki.Path("ca.pem"), pki.Path(cert + ".pem"), pki.Path(cert + ".key"), ""};
}

grpc::Status GetStatus(const ConnectionOptions& c, const std::string& token, bool local = false) {
  auto channel = MakeChannel(c);
  EXPECT_TRUE(channel.ok()) << channel.status();
  auto stub = v1::ControlPlane::NewStub(*channel);
  grpc::ClientContext ctx;
  Authenticate(ctx, token);
  if (local) ctx.AddMetadata("x-gradacc-local", "1");
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::Status s;
  return stub->GetStatus(&ctx, v1::GetStatusRequest(), &s);
}

// What a peer shard asks: a window's norm part (a far window, so that an
// admitted call waits until its deadline rather than answering).
grpc::Status GetNormPartial(const ConnectionOptions& c, const std::string& token) {
  auto stub = v1::ControlPlane::NewStub(*MakeChannel(c));
  grpc::ClientContext ctx;
  Authenticate(ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  v1::GetNormPartialRequest req;
  req.set_job_id("secure-shards");
  req.set_window(1000);
  v1::GetNormPartialResponse resp;
  return stub->GetNormPartial(&ctx, req, &resp);
}

grpc::Status Join(const ConnectionOptions& c, const std::string& token) {
  auto stub = v1::DataPlane::NewStub(*MakeChannel(c));
  grpc::ClientContext ctx;
  Authenticate(ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::JoinResponse resp;
  return stub->Join(&ctx, v1::JoinRequest(), &resp);
}

void RunWorkers(const std::string& dir, const std::string& servers, int workers, int micro_batches,
                const std::vector<std::string>& flags) {
  std::vector<std::unique_ptr<Subprocess>> running;
  for (int k = 0; k < workers; ++k) {
    std::vector<std::string> argv = {GRADACC_TEST_CLIENT_BIN, "--server=" + servers, absl::StrCat("--worker=", k),
                                     absl::StrCat("--micro_batches=", micro_batches), "--chunk_elements=500"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    auto p = Subprocess::Start(argv, absl::StrCat(dir, "/worker", k, ".log"));
    ASSERT_TRUE(p.ok());
    running.push_back(std::move(*p));
  }
  for (int k = 0; k < workers; ++k) {
    ASSERT_EQ(running[k]->Wait(absl::Seconds(120)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
  }
}

// The parameters of `kShardedJob` trained by one plaintext server.
std::vector<float> OnePlaintextServer() {
  const std::string dir = testing::MakeTempDir("secure_one");
  std::ofstream(dir + "/job.textproto") << kShardedJob;
  auto one = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors"});
  EXPECT_TRUE(one.ok()) << one.status();
  if (!one.ok()) return {};
  RunWorkers(dir, (*one)->address(), 2, 2, {});
  EXPECT_EQ((*one)->Stop(), std::optional<int>(0));
  auto single = ReadSafetensorsFile(dir + "/final.safetensors");
  EXPECT_TRUE(single.ok()) << single.status();
  if (!single.ok()) return {};
  std::vector<float> params = single->tensors.at("w").data;
  params.insert(params.end(), single->tensors.at("b").data.begin(), single->tensors.at("b").data.end());
  return params;
}

// What a peer without the right certificate or token gets from a shard,
// and what the shard token may not do.
void ExpectPeersChecked(const std::string& address) {
  EXPECT_EQ(GetNormPartial(Mtls(address), kWorkerToken).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(GetNormPartial(Mtls(address), kReaderToken).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(GetNormPartial(Mtls(address), "not-a-token").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(GetNormPartial(Mtls(address), "").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  // The right token with a certificate of another CA, or none: no TLS.
  EXPECT_EQ(GetNormPartial(Mtls(address, "intruder"), kShardToken).error_code(), grpc::StatusCode::UNAVAILABLE);
  ConnectionOptions no_cert = Mtls(address);
  no_cert.tls_cert_file = no_cert.tls_key_file = "";
  EXPECT_EQ(GetNormPartial(no_cert, kShardToken).error_code(), grpc::StatusCode::UNAVAILABLE);
  // The shard token is let in (it waits for a window to come) ...
  EXPECT_EQ(GetNormPartial(Mtls(address), kShardToken).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(GetStatus(Mtls(address), kShardToken, /*local=*/true).ok());
  // ... but may do nothing else.
  EXPECT_EQ(Join(Mtls(address), kShardToken).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(GetStatus(Mtls(address), kShardToken).error_code(), grpc::StatusCode::PERMISSION_DENIED);
}

TEST(SecurePortsTest, ShardsOverMutualTlsWithTokensTrainLikeOnePlaintextServer) {
  const Pki& pki = Pki::Get();
  const std::vector<float> expect = OnePlaintextServer();
  ASSERT_EQ(expect.size(), kN);

  const std::string dir = testing::MakeTempDir("secure_shards");
  std::ofstream(dir + "/job.textproto") << kShardedJob;
  std::vector<int> ports;
  std::string peers;
  for (int i = 0; i < kShards; ++i) {
    ports.push_back(FreePort());
    absl::StrAppend(&peers, i == 0 ? "" : ",", "127.0.0.1:", ports.back());
  }
  std::vector<std::unique_ptr<ServerProcess>> shards;
  for (int i = 0; i < kShards; ++i) {
    const std::string sd = absl::StrCat(dir, "/shard", i);
    ::mkdir(sd.c_str(), 0700);
    std::vector<std::string> flags = ServerSecurityFlags();
    for (const std::string& f :
         {"--job=" + dir + "/job.textproto", absl::StrCat("--shard=", i), absl::StrCat("--num_shards=", kShards),
          "--shard_peers=" + peers, "--shard_token_file=" + pki.Path("shard.token"),
          "--output=" + sd + "/final.safetensors"}) {
      flags.push_back(f);
    }
    auto s = ServerProcess::Start(sd, flags, ports[i]);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_TRUE(absl::StrContains((*s)->log(), "peers over TLS")) << (*s)->log();
    EXPECT_TRUE(absl::StrContains((*s)->log(), "with the shard token")) << (*s)->log();
    shards.push_back(std::move(*s));
  }
  ExpectPeersChecked(shards[1]->address());

  std::vector<std::string> worker_flags = ClientTlsFlags();
  worker_flags.push_back("--token_file=" + pki.Path("worker.token"));
  RunWorkers(dir, peers, 2, 2, worker_flags);

  // The job-wide status: each shard asked its peers over mutual TLS with
  // the shard token (each peer gets 500 ms: asked again on a busy machine).
  std::vector<std::string> status_argv = {GRADACC_CLI_BIN, "status", "--json", "--server=" + shards[2]->address(),
                                          "--token_file=" + pki.Path("reader.token")};
  for (const std::string& f : ClientTlsFlags()) status_argv.push_back(f);
  v1::Status status;
  std::string json;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  auto all_reachable = [&] {
    if (status.shards_size() != kShards) return false;
    for (const auto& s : status.shards()) {
      if (!s.reachable() || s.step() != 8u) return false;
    }
    return true;
  };
  do {
    json = RunCommand(status_argv).output;
    status.Clear();
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &status).ok()) << json;
  } while (!all_reachable() && absl::Now() < give_up);
  EXPECT_TRUE(all_reachable()) << json;

  std::vector<float> got;
  for (int i = 0; i < kShards; ++i) {
    ASSERT_EQ(shards[i]->Stop(), std::optional<int>(0)) << shards[i]->log();
    auto part = ReadSafetensorsFile(absl::StrCat(dir, "/shard", i, "/final.safetensors"));
    ASSERT_TRUE(part.ok()) << part.status();
    const auto& data = part->tensors.at("shard_params").data;
    got.insert(got.end(), data.begin(), data.end());
    const std::string log = shards[i]->log();
    EXPECT_FALSE(absl::StrContains(log, kShardToken) || absl::StrContains(log, kWorkerToken));
  }
  ASSERT_EQ(got.size(), kN);
  EXPECT_EQ(std::memcmp(got.data(), expect.data(), kN * 4), 0) << "3 shards over mutual TLS differ from 1 server";
  if (::testing::Test::HasFailure()) {
    for (int i = 0; i < kShards; ++i) std::printf("shard %d:\n%s\n", i, shards[i]->log().c_str());
  }
}

TEST(SecurePortsTest, ShardedServersRefuseIncompleteSecurity) {
  const Pki& pki = Pki::Get();
  const std::string dir = testing::MakeTempDir("secure_shard_flags");
  const std::string peers = absl::StrCat("127.0.0.1:", FreePort(), ",127.0.0.1:", FreePort());
  const std::vector<std::string> sharded = {GRADACC_SERVER_BIN, "--num_shards=2", "--shard=0", "--shard_peers=" + peers,
                                            "--listen=" + peers.substr(0, peers.find(','))};
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv = sharded;
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv, absl::Seconds(20));
  };
  // Tokens, but none for the shards.
  auto no_shard_token = run({"--worker_token_file=" + pki.Path("worker.token")});
  EXPECT_NE(no_shard_token.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(no_shard_token.output, "--shard_token_file")) << no_shard_token.output;
  // TLS, but no CA to check the other shards with.
  auto no_ca = run({"--tls_cert=" + pki.Path("server.pem"), "--tls_key=" + pki.Path("server.key")});
  EXPECT_NE(no_ca.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(no_ca.output, "--shard_tls_ca")) << no_ca.output;
  // The shard token may not be another role's.
  auto same =
      run({"--worker_token_file=" + pki.Path("worker.token"), "--shard_token_file=" + pki.Path("worker.token")});
  EXPECT_NE(same.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(same.output, "must differ")) << same.output;
}

std::vector<std::pair<std::string, std::string>> Bearer(const std::string& token) {
  return {{"Authorization", "Bearer " + token}};
}

TEST(SecurePortsTest, MetricsOverHttpsNeedATokenAndGrpcTlsKeepsWorking) {
  const Pki& pki = Pki::Get();
  const std::string dir = testing::MakeTempDir("secure_metrics");
  std::ofstream(dir + "/job.textproto") << kSmallJob;
  std::vector<std::string> flags = ServerSecurityFlags();
  for (const std::string& f : {"--job=" + dir + "/job.textproto", std::string("--metrics_listen=127.0.0.1:0"),
                               "--metrics_port_file=" + dir + "/metrics.port"}) {
    flags.push_back(f);
  }
  auto server = ServerProcess::Start(dir, flags);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = testing::WaitForPortFile(dir + "/metrics.port");
  ASSERT_GT(port, 0) << (*server)->log();
  EXPECT_TRUE(absl::StrContains((*server)->log(), "(HTTPS, reader or worker token required)")) << (*server)->log();
  const ConnectionOptions tls = Mtls((*server)->address());
  ASSERT_TRUE(GetStatus(tls, kReaderToken).ok()) << "gRPC over TLS before any HTTPS";

  const std::string ca = pki.Path("ca.pem");
  for (int round = 0; round < 3; ++round) {
    const auto none = HttpsGet(port, "/metrics", ca);
    EXPECT_TRUE(none.tls);
    EXPECT_EQ(none.status, 401);
    EXPECT_TRUE(absl::StrContains(none.headers, "WWW-Authenticate: Bearer")) << none.headers;
    EXPECT_FALSE(absl::StrContains(none.body, "gradacc_steps_total"));
    EXPECT_EQ(HttpsGet(port, "/metrics", ca, Bearer("not-a-token")).status, 401);
    const auto reader = HttpsGet(port, "/metrics", ca, Bearer(kReaderToken));
    EXPECT_EQ(reader.status, 200);
    EXPECT_TRUE(absl::StrContains(reader.headers, "text/plain; version=0.0.4")) << reader.headers;
    EXPECT_TRUE(absl::StrContains(reader.body, "# TYPE gradacc_steps_total counter")) << reader.body;
    EXPECT_EQ(HttpsGet(port, "/metrics", ca, Bearer(kWorkerToken)).status, 200);
    // Plain HTTP to the HTTPS port, or a server we cannot verify: nothing.
    EXPECT_EQ(HttpGet(port, "/metrics", Bearer(kReaderToken)).status, 0);
    EXPECT_FALSE(HttpsGet(port, "/metrics", pki.Path("otherca.pem"), Bearer(kReaderToken)).tls);
    EXPECT_TRUE(GetStatus(tls, kReaderToken).ok()) << "gRPC over TLS after HTTPS scrapes, round " << round;
  }
  // The whole job over gRPC's TLS (new connections, pushes and pulls) after
  // the scrapes, then its metrics.
  std::vector<std::string> worker_flags = ClientTlsFlags();
  worker_flags.push_back("--token_file=" + pki.Path("worker.token"));
  RunWorkers(dir, (*server)->address(), 2, 1, worker_flags);
  const auto after = HttpsGet(port, "/metrics", ca, Bearer(kReaderToken));
  EXPECT_TRUE(absl::StrContains(after.body, "gradacc_steps_total{job=\"secure-ports\"} 5")) << after.body;
  EXPECT_TRUE(GetStatus(tls, kReaderToken).ok());
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

TEST(SecurePortsTest, DashboardOverHttpsWithItsToken) {
  const Pki& pki = Pki::Get();
  const std::string dir = testing::MakeTempDir("secure_dashboard");
  std::ofstream(dir + "/job.textproto") << kSmallJob;
  std::vector<std::string> flags = ServerSecurityFlags();
  flags.push_back("--job=" + dir + "/job.textproto");
  auto server = ServerProcess::Start(dir, flags);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::string> argv = {GRADACC_CLI_BIN,
                                   "dashboard",
                                   "--server=" + (*server)->address(),
                                   "--listen=127.0.0.1:0",
                                   "--port_file=" + dir + "/dashboard.port",
                                   "--token_file=" + pki.Path("reader.token"),
                                   "--https_cert=" + pki.Path("server.pem"),
                                   "--https_key=" + pki.Path("server.key")};
  for (const std::string& f : ClientTlsFlags()) argv.push_back(f);
  auto dashboard = Subprocess::Start(argv, dir + "/dashboard.log");
  ASSERT_TRUE(dashboard.ok());
  const int port = testing::WaitForPortFile(dir + "/dashboard.port");
  ASSERT_GT(port, 0) << ReadFile(dir + "/dashboard.log");
  EXPECT_TRUE(absl::StrContains(ReadFile(dir + "/dashboard.log"), "https://127.0.0.1:"));
  const std::string ca = pki.Path("ca.pem");

  const auto page = HttpsGet(port, "/", ca);
  EXPECT_EQ(page.status, 200);
  EXPECT_TRUE(absl::StrContains(page.body, "<html")) << page.body.substr(0, 200);
  EXPECT_EQ(HttpsGet(port, "/api/status", ca).status, 401);
  EXPECT_EQ(HttpsGet(port, "/api/status", ca, Bearer(kWorkerToken)).status, 401);
  EXPECT_EQ(HttpsGet(port, "/api/status", ca,
                     {{"Authorization", std::string("Bearer ") + kReaderToken}, {"Host", "evil.example:80"}})
                .status,
            403);
  // Data with the token, once the dashboard follows the server over TLS.
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  testing::HttpReply status;
  do {
    status = HttpsGet(port, "/api/status", ca, Bearer(kReaderToken));
    if (absl::StrContains(status.body, "\"connected\":true")) break;
    absl::SleepFor(absl::Milliseconds(50));
  } while (absl::Now() < give_up);
  EXPECT_EQ(status.status, 200);
  EXPECT_TRUE(absl::StrContains(status.body, "\"connected\":true")) << status.body;
  EXPECT_TRUE(absl::StrContains(status.body, "secure-ports")) << status.body;
  EXPECT_EQ(HttpGet(port, "/api/status", Bearer(kReaderToken)).status, 0) << "plain HTTP to the HTTPS port";
  (*dashboard)->Signal(SIGTERM);
  EXPECT_EQ((*dashboard)->Wait(absl::Seconds(20)), std::optional<int>(0));
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

TEST(SecurePortsTest, NoPlaintextBeyondLoopbackUnlessTold) {
  const std::string dir = testing::MakeTempDir("secure_plaintext");
  auto metrics =
      RunCommand({GRADACC_SERVER_BIN, "--listen=127.0.0.1:0", "--metrics_listen=0.0.0.0:0"}, absl::Seconds(20));
  EXPECT_NE(metrics.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(metrics.output, "refusing plaintext metrics on '0.0.0.0:0'")) << metrics.output;
  auto dashboard = RunCommand({GRADACC_CLI_BIN, "dashboard", "--server=", "--listen=0.0.0.0:0"}, absl::Seconds(20));
  EXPECT_NE(dashboard.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(dashboard.output, "refusing to serve the dashboard in plain HTTP")) << dashboard.output;
  auto peers = RunCommand({GRADACC_SERVER_BIN, "--listen=127.0.0.1:0", "--num_shards=2", "--shard=0",
                           "--shard_peers=127.0.0.1:1,10.1.2.3:7070"},
                          absl::Seconds(20));
  EXPECT_NE(peers.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(peers.output, "refusing plaintext channel to shard '10.1.2.3:7070'")) << peers.output;
}

}  // namespace
}  // namespace gradacc
