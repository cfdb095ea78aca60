// Several real worker processes (gradacc_test_client, built on the client
// library) train against the real gradacc-server for 12 windows; the final
// parameters must match a reference computed here, and the real CLI must
// report the run (`gradacc status --json`, `gradacc health`). The same job
// through every transport (shared memory, gRPC alone, a mix, and the
// automatic fallback) gives the same bits and shows each worker's transport
// in status. Also the Python example of docs/protocol.md against the same server.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/errors.h"
#include "common/safetensors.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.pb.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/subprocess.h"
#include "worker/client/client.h"
#include "worker/cli/status_format.h"

namespace gradacc {
namespace {

using testing::ReadFile;
using testing::RunCommand;
using testing::ServerProcess;
using testing::Subprocess;

constexpr int kWorkers = 4, kMicro = 2, kSteps = 12, kRows = 64, kCols = 33;

constexpr char kJob[] = R"pb(
  job_id: "multi"
  model {
    tensors { name: "w" shape: [64, 33] init { uniform { low: -0.5 high: 0.5 } } }
    tensors { name: "b" shape: [33] }
  }
  optimizer { kind: KIND_SGD lr: 0.05 sgd { momentum: 0.9 } }
  window { num_workers: 4 micro_batches: 2 }
  total_steps: 12
  seed: 5
)pb";

// The seeded initialiser as job.proto documents it, written out again here.
double DocumentedUniform(uint64_t seed, uint64_t j) {
  uint64_t z = seed + j * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  return static_cast<double>(z >> 40) * (1.0 / 16777216.0);
}

// The trajectory test_client.cc produces, computed without gradacc: the
// window's gradient is the sample-weighted mean over all workers, summed in
// worker order; SGD with momentum as torch.optim.SGD (fused multiply-adds,
// as PyTorch's CPU kernels).
std::vector<float> Reference(std::vector<float> p) {
  const size_t n = p.size();
  std::vector<float> buf(n);
  for (int v = 0; v < kSteps; ++v) {
    std::vector<float> total(n, 0.0f);
    uint64_t samples = 0;
    for (int k = 0; k < kWorkers; ++k) {
      std::vector<float> g(n, 0.0f);
      for (int m = 0; m < kMicro; ++m) {
        const int s = 1 + (k + v + m) % 3;
        samples += s;
        for (size_t i = 0; i < n; ++i) {
          const float target = static_cast<float>(static_cast<int>(i % 13) - 6) * 0.1f;
          const float offset = static_cast<float>(static_cast<int>((i * 7 + k * 5 + v * 3 + m) % 9) - 4) * 0.01f;
          g[i] += static_cast<float>(s) * (p[i] - target) + offset;
        }
      }
      for (size_t i = 0; i < n; ++i) total[i] = k == 0 ? g[i] : total[i] + g[i];
    }
    for (size_t i = 0; i < n; ++i) {
      const float d = total[i] / static_cast<float>(samples);
      buf[i] = v == 0 ? d : std::fma(1.0f, d, buf[i] * 0.9f);
      p[i] = std::fma(-0.05f, buf[i], p[i]);
    }
  }
  return p;
}

TEST(ClientIntegrationTest, WorkersTrainAgainstTheRealServer) {
  const std::string dir = testing::MakeTempDir("multi");
  std::ofstream(dir + "/job.textproto") << kJob;
  const std::string out = dir + "/final.safetensors";
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + out});
  ASSERT_TRUE(server.ok()) << server.status();

  auto health = RunCommand({GRADACC_CLI_BIN, "health", "--server=" + (*server)->address()});
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_NE(health.output.find("SERVING"), std::string::npos);

  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) {
    auto p = Subprocess::Start({GRADACC_TEST_CLIENT_BIN, "--server=" + (*server)->address(),
                                absl::StrCat("--worker=", k), absl::StrCat("--micro_batches=", kMicro),
                                absl::StrCat("--chunk_elements=", 97 + k * 300)},
                               absl::StrCat(dir, "/worker", k, ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    workers.push_back(std::move(*p));
  }
  for (int k = 0; k < kWorkers; ++k) {
    auto code = workers[k]->Wait(absl::Seconds(90));
    ASSERT_EQ(code, std::optional<int>(0)) << testing::ReadFile(absl::StrCat(dir, "/worker", k, ".log"))
                                           << (*server)->log();
  }

  // The CLI's JSON is protobuf's JSON mapping of gradacc.v1.Status.
  auto status_run = RunCommand({GRADACC_CLI_BIN, "status", "--json", "--server=" + (*server)->address()});
  ASSERT_EQ(status_run.exit_code, 0) << status_run.output;
  v1::Status status;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(status_run.output, &status).ok()) << status_run.output;
  EXPECT_EQ(status.job_id(), "multi");
  EXPECT_EQ(status.state(), v1::JOB_STATE_DONE);
  EXPECT_EQ(status.step(), static_cast<uint64_t>(kSteps));
  EXPECT_EQ(status.total_steps(), static_cast<uint64_t>(kSteps));
  ASSERT_EQ(status.workers_size(), kWorkers);
  for (const auto& w : status.workers()) {
    EXPECT_EQ(w.contributions(), static_cast<uint64_t>(kSteps));
    EXPECT_EQ(w.state(), v1::WORKER_STATE_LEFT);
  }
  EXPECT_EQ(status.contributions_accepted(), static_cast<uint64_t>(kSteps * kWorkers));
  EXPECT_EQ(status.loss_history_size(), kSteps);
  auto table = RunCommand({GRADACC_CLI_BIN, "status", "--server=" + (*server)->address()});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_NE(table.output.find("step         12 / 12"), std::string::npos) << table.output;

  // Final parameters against the reference, from the same seeded start.
  auto final_params = ReadSafetensorsFile(out);
  ASSERT_TRUE(final_params.ok()) << final_params.status() << (*server)->log();
  std::vector<float> p0(kRows * kCols + kCols, 0.0f);
  for (int i = 0; i < kRows * kCols; ++i) {
    p0[i] = static_cast<float>(-0.5 + 1.0 * DocumentedUniform(5 + 1000003, i));
  }
  const std::vector<float> expect = Reference(p0);
  std::vector<float> got = final_params->tensors.at("w").data;
  got.insert(got.end(), final_params->tensors.at("b").data.begin(), final_params->tensors.at("b").data.end());
  ASSERT_EQ(got.size(), expect.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    worst = std::max(worst, std::fabs(double{got[i]} - expect[i]) / std::max(1e-3, std::fabs(double{expect[i]})));
  }
  EXPECT_LE(worst, 1e-6);
  std::printf("max relative error against the reference: %.3g\n", worst);

  // The final file is plain safetensors: readable without gradacc's code.
  auto py = RunCommand({"/usr/bin/python3", GRADACC_SOURCE_DIR "/tests/python/read_safetensors.py", out});
  EXPECT_EQ(py.exit_code, 0) << py.output;
  EXPECT_NE(py.output.find("w [64, 33]"), std::string::npos) << py.output;
  EXPECT_NE(py.output.find("\"step\": \"12\""), std::string::npos) << py.output;

  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  auto down = RunCommand({GRADACC_CLI_BIN, "health", "--server=" + (*server)->address(), "--timeout_s=2"});
  EXPECT_NE(down.exit_code, 0);
}

// The job run once with the given server flags and per-worker flags;
// `after_start` runs between the server's start and the workers'.
struct TransportRun {
  std::string params;  // the final safetensors file, bytes
  v1::Status status;
  std::string metrics;  // /metrics at the end, when the server serves it
};
TransportRun RunWithTransports(const std::string& tag, std::vector<std::string> server_flags,
                               const std::function<std::vector<std::string>(int)>& worker_flags,
                               const std::function<void(const std::string&)>& after_start = {},
                               const std::vector<std::string>& every_worker = {}) {
  TransportRun run;
  const std::string dir = testing::MakeTempDir(tag);
  std::ofstream(dir + "/job.textproto") << kJob;
  server_flags.push_back("--job=" + dir + "/job.textproto");
  server_flags.push_back("--output=" + dir + "/final.safetensors");
  for (std::string& f : server_flags) absl::StrReplaceAll({{"$DIR", dir}}, &f);
  std::filesystem::create_directories(dir + "/shm");  // for --shared_memory_dir=$DIR/shm
  auto server = ServerProcess::Start(dir, server_flags);
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return run;
  if (after_start) after_start(dir);
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) {
    std::vector<std::string> flags = worker_flags(k);
    flags.push_back(absl::StrCat("--micro_batches=", kMicro));
    flags.insert(flags.end(), every_worker.begin(), every_worker.end());
    workers.push_back(testing::StartTestClient(dir, (*server)->address(), k, flags));
  }
  for (int k = 0; k < kWorkers; ++k) {
    EXPECT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << testing::ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  run.status = testing::CliStatus((*server)->address());
  if (std::filesystem::exists(dir + "/metrics.port")) {
    const int port = std::stoi(testing::ReadFile(dir + "/metrics.port"));
    run.metrics = testing::HttpGet(port, "/metrics").body;
  }
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  run.params = testing::ReadFile(dir + "/final.safetensors");
  return run;
}

TEST(ClientIntegrationTest, EveryTransportGivesTheSameBitsAndShowsInStatus) {
  auto all = [](const std::string& flag) { return [flag](int) { return std::vector<std::string>{flag}; }; };
  const TransportRun grpc = RunWithTransports("t_grpc", {}, all("--shared_memory=false"));
  ASSERT_FALSE(grpc.params.empty());
  for (const auto& w : grpc.status.workers()) EXPECT_EQ(TransportLabel(w, grpc.status), "gRPC");

  const TransportRun shm = RunWithTransports("t_shm", {"--shared_memory_dir=/dev/shm"}, all("--shared_memory=true"));
  for (const auto& w : shm.status.workers()) EXPECT_EQ(TransportLabel(w, shm.status), "shared memory");
  EXPECT_EQ(shm.params, grpc.params) << "shared memory and gRPC runs differ";
  // Shared memory without the fast path (Push and Pull RPCs carry the
  // window's control messages): the same bits.
  const TransportRun rpc_shm = RunWithTransports("t_shm_rpc", {"--shared_memory_dir=/dev/shm", "--shm_fast_path=false"},
                                                 all("--shared_memory=true"));
  for (const auto& w : rpc_shm.status.workers()) EXPECT_EQ(TransportLabel(w, rpc_shm.status), "shared memory");
  EXPECT_EQ(rpc_shm.params, grpc.params) << "shared memory without the fast path and gRPC runs differ";

  // Half on each: the server builds pull chunks for the gRPC half only.
  const TransportRun mixed = RunWithTransports("t_mixed", {}, [](int k) {
    return std::vector<std::string>{absl::StrCat("--shared_memory=", k % 2 == 0)};
  });
  for (const auto& w : mixed.status.workers()) {
    EXPECT_EQ(TransportLabel(w, mixed.status), w.worker() % 2 == 0 ? "shared memory" : "gRPC");
  }
  EXPECT_EQ(mixed.params, grpc.params) << "a mixed-transport run differs";

  // The offered segment cannot be opened (removed behind the server's
  // back): every worker falls back to gRPC by itself and status says why.
  const TransportRun fallback = RunWithTransports(
      "t_fallback", {"--shared_memory_dir=$DIR/shm"}, all("--shared_memory=true"), [](const std::string& dir) {
        for (const auto& e : std::filesystem::directory_iterator(dir + "/shm")) std::filesystem::remove(e.path());
      });
  for (const auto& w : fallback.status.workers()) {
    EXPECT_NE(TransportLabel(w, fallback.status).find("gRPC (shared memory failed: cannot open shared-memory segment"),
              std::string::npos)
        << TransportLabel(w, fallback.status);
  }
  EXPECT_EQ(fallback.params, grpc.params) << "the fallback run differs";

  const TransportRun off = RunWithTransports("t_off", {"--shared_memory_dir="}, all("--shared_memory=true"));
  for (const auto& w : off.status.workers()) {
    EXPECT_EQ(TransportLabel(w, off.status),
              "gRPC (no shared memory: off on this server (--shared_memory_dir is empty))");
  }
  EXPECT_EQ(off.params, grpc.params);

  // A staging pool of two chunks (the running sum's, server/accumulator.h):
  // four workers push at once, those behind the head of the worker order
  // are paused by flow control instead of buffered — the same bits, never
  // more than the bound staged, nobody spilled.
  const TransportRun tiny = RunWithTransports(
      "t_tiny_staging",
      {"--staging_mb=0.00077", "--stall_ms=600000", "--metrics_listen=127.0.0.1:0",
       "--metrics_port_file=$DIR/metrics.port"},
      all("--shared_memory=false"));
  EXPECT_EQ(tiny.params, grpc.params) << "a tiny staging pool changed the bits";
  auto metric = [&](const std::string& name) -> int64_t {
    for (absl::string_view line : absl::StrSplit(tiny.metrics, '\n')) {
      if (absl::StartsWith(line, name)) return std::stoll(std::string(line.substr(line.rfind(' ') + 1)));
    }
    ADD_FAILURE() << name << " not in /metrics:\n" << tiny.metrics;
    return -1;
  };
  EXPECT_LE(metric("gradacc_staging_bytes{job=\"multi\",kind=\"peak\"}"), 807) << "2 chunks of 100 floats";
  EXPECT_GT(metric("gradacc_pushes_paused_total{job=\"multi\",outcome=\"paused\"}"), 0)
      << "the pool never filled: the test would not show flow control";
  EXPECT_EQ(metric("gradacc_pushes_paused_total{job=\"multi\",outcome=\"spilled\"}"), 0);

  // Compressed on the wire: half the bytes, close to (not equal to) f32.
  const TransportRun bf16 =
      RunWithTransports("t_bf16", {}, all("--shared_memory=false"), {}, {"--wire_format=bf16"});
  ASSERT_FALSE(bf16.params.empty());
  EXPECT_NE(bf16.params, grpc.params);
  auto f32_file = DecodeSafetensors(grpc.params);
  auto bf16_file = DecodeSafetensors(bf16.params);
  ASSERT_TRUE(f32_file.ok() && bf16_file.ok());
  const auto& a = f32_file->tensors.at("w").data;
  const auto& b = bf16_file->tensors.at("w").data;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{a[i]} * a[i];
  }
  std::printf("bf16 on the wire: relative difference of the final weights %.3g\n", std::sqrt(num / den));
  EXPECT_LT(std::sqrt(num / den), 1e-2);
}

// Step without a micro-batch used to treat its own "nothing to push" as
// "rejoin and retry" and spin (Join, AttachSharedMemory, no backoff) until
// the window timeout. It is a refusal the caller must fix: returned at once.
TEST(ClientIntegrationTest, StepWithoutMicroBatchesIsRefusedAtOnce) {
  const std::string dir = testing::MakeTempDir("nothing_to_push");
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto"});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions options;
  options.server = (*server)->address();
  options.worker = 1;
  options.connect_timeout = absl::Seconds(30);
  options.window_timeout = absl::Seconds(30);
  auto client = Client::Connect(options);
  ASSERT_TRUE(client.ok()) << client.status();

  const absl::Time start = absl::Now();
  auto step = (*client)->Step();
  const absl::Duration took = absl::Now() - start;
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(ReasonOf(step.status()), v1::ERROR_REASON_NOTHING_TO_PUSH) << step.status();
  EXPECT_EQ(ActionOf(step.status()), v1::CLIENT_ACTION_FIX_REQUEST);
  EXPECT_LT(took, absl::Seconds(1)) << "Step spun for " << took;
  EXPECT_EQ((*client)->version(), 0u);
  EXPECT_TRUE((*client)->Leave().ok());

  const v1::Status status = testing::CliStatus((*server)->address());
  EXPECT_EQ(status.contributions_accepted() + status.contributions_rejected(), 0u);
  EXPECT_EQ(status.workers(1).state(), v1::WORKER_STATE_LEFT);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

TEST(ClientIntegrationTest, PythonGrpcioReadsStatus) {
  const std::string dir = testing::MakeTempDir("python");
  auto server = ServerProcess::Start(dir, {});
  ASSERT_TRUE(server.ok()) << server.status();
  auto py = RunCommand({"/usr/bin/python3", GRADACC_SOURCE_DIR "/tests/python/status_client.py", (*server)->address(),
                 dir + "/stubs"},
                absl::Seconds(60));
  ASSERT_EQ(py.exit_code, 0) << py.output;
  EXPECT_NE(py.output.find("job default: JOB_STATE_WAITING, step 0/1407"), std::string::npos) << py.output;
  EXPECT_NE(py.output.find("workers expected: 4"), std::string::npos) << py.output;
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

// The protocol document's Python example (tests/python/push_pull_example.py,
// quoted in docs/protocol.md verbatim) is a complete worker: two of them train a job to the end, and
// the result is what SGD on 0.5 * ||p||^2 gives (p <- 0.9 p each step).
TEST(ClientIntegrationTest, ProtocolDocPythonPushPullExampleTrains) {
  const std::string example = ReadFile(GRADACC_SOURCE_DIR "/tests/python/push_pull_example.py");
  ASSERT_FALSE(example.empty());
  EXPECT_NE(ReadFile(GRADACC_SOURCE_DIR "/docs/protocol.md").find(example), std::string::npos)
      << "docs/protocol.md must quote tests/python/push_pull_example.py verbatim";
  const std::string dir = testing::MakeTempDir("python_push");
  std::ofstream(dir + "/job.textproto") << R"pb(
    job_id: "py"
    model {
      tensors { name: "w" shape: [3, 4] init { constant: 1.0 } }
      tensors { name: "b" shape: [70000] init { constant: -2.0 } }
    }
    optimizer { kind: KIND_SGD lr: 0.1 }
    window { num_workers: 2 }
    total_steps: 3
  )pb";
  auto server = ServerProcess::Start(
      dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors", "--shared_memory_dir="});
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < 2; ++k) {
    auto p = Subprocess::Start({"/usr/bin/python3", GRADACC_SOURCE_DIR "/tests/python/push_pull_example.py",
                                (*server)->address(), absl::StrCat(dir, "/stubs", k), absl::StrCat(k)},
                               absl::StrCat(dir, "/py", k, ".log"));
    ASSERT_TRUE(p.ok()) << p.status();
    workers.push_back(std::move(*p));
  }
  for (int k = 0; k < 2; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(120)), std::optional<int>(0)) << ReadFile(absl::StrCat(dir, "/py", k, ".log"));
    EXPECT_NE(ReadFile(absl::StrCat(dir, "/py", k, ".log")).find("done at version 3"), std::string::npos);
  }
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  auto out = ReadSafetensorsFile(dir + "/final.safetensors");
  ASSERT_TRUE(out.ok()) << out.status();
  const float w = 0.9f * (0.9f * (0.9f * 1.0f));
  const float b = 0.9f * (0.9f * (0.9f * -2.0f));
  EXPECT_NEAR(out->tensors.at("w").data[5], w, 1e-6);
  EXPECT_NEAR(out->tensors.at("b").data[69999], b, 1e-6);
}

}  // namespace
}  // namespace gradacc
