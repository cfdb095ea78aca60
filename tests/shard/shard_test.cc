// Sharded servers: the same run on 1 and on 2 shards (each shard owns a
// contiguous half of the flat parameters, so tensor "w" is split between
// them), global-norm clipping included, gives the same parameters; status
// from a shard names its part and the job-wide picture.
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/safetensors.h"
#include "common/wire.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::FreePort;
using testing::ReadFile;
using testing::RunCommand;
using testing::ServerProcess;
using testing::Subprocess;

constexpr char kJob[] = R"pb(
  job_id: "sharded"
  model {
    tensors { name: "w" shape: [160, 33] init { uniform { low: -0.5 high: 0.5 } } }
    tensors { name: "b" shape: [33] init { constant: 0.1 } }
  }
  optimizer { kind: KIND_ADAM lr: 0.01 }
  window { num_workers: 3 micro_batches: 2 }
  clipping { max_norm: 1.0 }
  total_steps: 12
  seed: 8
)pb";
constexpr uint64_t kN = 160 * 33 + 33;  // w is large enough to be split: shard 0 owns [0, 2656)

void RunWorkers(const std::string& dir, const std::string& servers) {
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < 3; ++k) {
    auto p = Subprocess::Start({GRADACC_TEST_CLIENT_BIN, "--server=" + servers, absl::StrCat("--worker=", k),
                                "--micro_batches=2", "--chunk_elements=500"},
                               absl::StrCat(dir, "/worker", k, ".log"));
    ASSERT_TRUE(p.ok());
    workers.push_back(std::move(*p));
  }
  for (int k = 0; k < 3; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
  }
}

TEST(ShardTest, TwoShardsGiveTheParametersOfOne) {
  // One server.
  const std::string one_dir = testing::MakeTempDir("one_shard");
  std::ofstream(one_dir + "/job.textproto") << kJob;
  auto one = ServerProcess::Start(one_dir, {"--job=" + one_dir + "/job.textproto",
                                            "--output=" + one_dir + "/final.safetensors"});
  ASSERT_TRUE(one.ok()) << one.status();
  RunWorkers(one_dir, (*one)->address());
  ASSERT_EQ((*one)->Stop(), std::optional<int>(0));
  auto single = ReadSafetensorsFile(one_dir + "/final.safetensors");
  ASSERT_TRUE(single.ok()) << single.status();
  std::vector<float> expect = single->tensors.at("w").data;
  expect.insert(expect.end(), single->tensors.at("b").data.begin(), single->tensors.at("b").data.end());

  // Two shards.
  const std::string dir = testing::MakeTempDir("two_shards");
  std::ofstream(dir + "/job.textproto") << kJob;
  const int ports[2] = {FreePort(), FreePort()};
  const std::string peers = absl::StrCat("127.0.0.1:", ports[0], ",127.0.0.1:", ports[1]);
  std::vector<std::unique_ptr<ServerProcess>> shards;
  for (int i = 0; i < 2; ++i) {
    const std::string sd = absl::StrCat(dir, "/shard", i);
    ::mkdir(sd.c_str(), 0755);
    auto s = ServerProcess::Start(sd, {"--job=" + dir + "/job.textproto", absl::StrCat("--shard=", i),
                                       "--num_shards=2", "--shard_peers=" + peers,
                                       "--output=" + sd + "/final.safetensors"},
                                  ports[i]);
    ASSERT_TRUE(s.ok()) << s.status();
    shards.push_back(std::move(*s));
  }
  EXPECT_NE(shards[1]->log().find("shard 1 of 2: flat elements [2656, 5313)"), std::string::npos)
      << shards[1]->log();

  // A chunk of the other shard's part is refused.
  {
    auto stub = v1::DataPlane::NewStub(grpc::CreateChannel(shards[0]->address(), grpc::InsecureChannelCredentials()));
    // A call that names another shard than the one at this address (a
    // server list out of shard order) is refused before anything happens.
    {
      grpc::ClientContext wrong;
      wrong.AddMetadata(kShardMetadataKey, "1");
      v1::JoinRequest join;
      v1::JoinResponse joined;
      const grpc::Status s = stub->Join(&wrong, join, &joined);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_NE(s.error_message().find("'x-gradacc-shard: 1' is not a shard served at this address (shard 0)"),
                std::string::npos)
          << s.error_message();
    }
    grpc::ClientContext jctx;
    v1::JoinRequest join;
    join.set_worker(0);
    v1::JoinResponse joined;
    ASSERT_TRUE(stub->Join(&jctx, join, &joined).ok());
    EXPECT_EQ(joined.shard_begin(), 0u);
    EXPECT_EQ(joined.shard_end(), 2656u);
    grpc::ClientContext ctx;
    v1::PushResponse resp;
    auto writer = stub->Push(&ctx, &resp);
    v1::PushRequest req;
    req.mutable_header()->set_worker(0);
    req.mutable_header()->set_samples(1);
    req.mutable_header()->set_num_elements(2656);
    writer->Write(req);
    v1::PushRequest chunk;
    chunk.mutable_chunk()->set_tensor(1);
    chunk.mutable_chunk()->set_data(std::string(33 * 4, '\0'));
    writer->Write(chunk);
    writer->WritesDone();
    const grpc::Status s = writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("outside shard 0's elements [0, 2656)"), std::string::npos) << s.error_message();
  }

  RunWorkers(dir, peers);
  // Status from shard 1: its part and the job-wide picture.
  auto json = RunCommand({GRADACC_CLI_BIN, "status", "--json", "--server=" + shards[1]->address()});
  v1::Status status;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.output, &status).ok()) << json.output;
  EXPECT_EQ(status.shard(), 1u);
  EXPECT_EQ(status.num_shards(), 2u);
  EXPECT_EQ(status.shard_begin(), 2656u);
  EXPECT_EQ(status.shard_end(), kN);
  ASSERT_EQ(status.shards_size(), 2);
  for (const auto& s : status.shards()) {
    EXPECT_TRUE(s.reachable());
    EXPECT_EQ(s.step(), 12u);
  }
  EXPECT_EQ(status.shards(0).shard_end(), 2656u);

  std::vector<float> got;
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(shards[i]->Stop(), std::optional<int>(0));
    auto part = ReadSafetensorsFile(absl::StrCat(dir, "/shard", i, "/final.safetensors"));
    ASSERT_TRUE(part.ok()) << part.status();
    EXPECT_EQ(part->metadata.at("shard"), absl::StrCat(i));
    const auto& data = part->tensors.at("shard_params").data;
    got.insert(got.end(), data.begin(), data.end());
  }
  ASSERT_EQ(got.size(), kN);
  double worst = 0;
  for (size_t i = 0; i < kN; ++i) {
    worst = std::max(worst, std::fabs(double{got[i]} - expect[i]) / std::max(1e-3, std::fabs(double{expect[i]})));
  }
  std::printf("2 shards vs 1: max relative difference %.3g\n", worst);
  EXPECT_LE(worst, 1e-6);
  // In fact the same bits: small tensors are never split and the norm parts
  // add up to what one server computes.
  EXPECT_EQ(std::memcmp(got.data(), expect.data(), kN * 4), 0);
}

// One process serving both shards of the job: the workers reach it over one
// address (listed once per shard), each shard keeps its own files, and
// /metrics has both shards, each metric's HELP once, samples labelled.
TEST(ShardTest, OneProcessServesBothShardsAndTheirMetrics) {
  const std::string dir = testing::MakeTempDir("both_shards");
  std::ofstream(dir + "/job.textproto") << kJob;
  const int port = FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto server = ServerProcess::Start(dir,
                                     {"--job=" + dir + "/job.textproto", "--shard=0,1", "--num_shards=2",
                                      "--shard_peers=" + address + "," + address,
                                      "--output=" + dir + "/final.safetensors", "--metrics_listen=127.0.0.1:0",
                                      "--metrics_port_file=" + dir + "/metrics.port"},
                                     port);
  ASSERT_TRUE(server.ok()) << server.status();
  RunWorkers(dir, address + "," + address);
  int metrics_port = 0;
  for (int i = 0; i < 200 && metrics_port == 0; ++i) {
    const std::string text = ReadFile(dir + "/metrics.port");
    if (!text.empty() && text.back() == '\n') metrics_port = std::stoi(text);
    if (metrics_port == 0) absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_GT(metrics_port, 0);
  const std::string metrics = testing::HttpGet(metrics_port, "/metrics").body;
  size_t helps = 0;
  for (size_t at = metrics.find("# HELP gradacc_steps_total "); at != std::string::npos;
       at = metrics.find("# HELP gradacc_steps_total ", at + 1)) {
    ++helps;
  }
  EXPECT_EQ(helps, 1u) << metrics;
  for (int shard = 0; shard < 2; ++shard) {
    const std::string labels = absl::StrCat("{job=\"sharded\",shard=\"", shard, "\"");
    EXPECT_NE(metrics.find(absl::StrCat("gradacc_steps_total", labels, "} 12\n")), std::string::npos) << metrics;
    EXPECT_NE(metrics.find(absl::StrCat("gradacc_workers", labels, ",state=\"alive\"}")), std::string::npos)
        << metrics;
    // Each shard received its own part of every push.
    const size_t at = metrics.find(absl::StrCat("gradacc_received_bytes_total", labels, "} "));
    ASSERT_NE(at, std::string::npos) << metrics;
    EXPECT_GT(std::stoull(metrics.substr(metrics.find("} ", at) + 2)), 0u);
  }
  ASSERT_EQ((*server)->Stop(), std::optional<int>(0));
  for (int shard = 0; shard < 2; ++shard) {
    EXPECT_TRUE(ReadSafetensorsFile(absl::StrCat(dir, "/final.safetensors.shard-", shard)).ok()) << shard;
  }
}

// --shard lists that cannot be served are refused at start, by name.
TEST(ShardTest, BadShardListsAreRefused) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--shard=1,1", "--shard names shard 1 twice"},
      {"--shard=0,2", "shard 2 of a job of 2 shards"},
      {"--shard=0,x", "bad --shard 'x'"},
  };
  for (const auto& [flag, message] : cases) {
    auto run = RunCommand({GRADACC_SERVER_BIN, "--listen=127.0.0.1:0", "--num_shards=2", flag,
                           "--shard_peers=127.0.0.1:1,127.0.0.1:1"},
                          absl::Seconds(20));
    EXPECT_EQ(run.exit_code, 1) << flag << ": " << run.output;
    EXPECT_NE(run.output.find(message), std::string::npos) << flag << ": " << run.output;
  }
}

}  // namespace
}  // namespace gradacc
