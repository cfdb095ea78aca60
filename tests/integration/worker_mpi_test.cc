// gradacc-worker through mpirun against the real gradacc-server: 3 ranks
// train a small MLP for a few windows; the server's status must show every
// step, every worker, a falling loss and the test accuracy rank 0 reported.
// The same job through every path (gRPC, shared memory, hierarchical
// reduction on either) gives the same bits. Also: the worker rejects bad
// arguments with a clear message and a non-zero exit, within a bounded time.
#include <fstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.pb.h"
#include "gtest/gtest.h"
#include "tests/subprocess.h"
#include "worker/cli/status_format.h"

namespace gradacc {
namespace {

using testing::RunCommand;
using testing::ServerProcess;

constexpr char kJob[] = R"pb(
  job_id: "mpi"
  model {
    tensors { name: "fc1.weight" shape: [32, 784] init { fan_in_uniform { fan_in: 784 } } }
    tensors { name: "fc1.bias" shape: [32] init { fan_in_uniform { fan_in: 784 } } }
    tensors { name: "fc2.weight" shape: [10, 32] init { fan_in_uniform { fan_in: 32 } } }
    tensors { name: "fc2.bias" shape: [10] init { fan_in_uniform { fan_in: 32 } } }
  }
  optimizer { kind: KIND_ADAM lr: 0.003 }
  window { num_workers: 3 micro_batches: 2 micro_batch_size: 20 }
  total_steps: 30
  seed: 9
  worker_hints { key: "model" value: "mlp" }
  worker_hints { key: "hidden" value: "32" }
)pb";

// Open MPI refuses root and more ranks than cores unless told; tests may run
// as root on 2 cores (CI does).
const bool kMpiEnvironment = (testing::AllowMpiAsRoot(), true);

std::vector<std::string> Mpirun(int ranks, const std::vector<std::string>& worker_args) {
  std::vector<std::string> argv = {GRADACC_MPIEXEC, "-np", std::to_string(ranks), "--oversubscribe",
                                   "--allow-run-as-root", "-x", "OPENBLAS_NUM_THREADS=1", GRADACC_WORKER_BIN};
  argv.insert(argv.end(), worker_args.begin(), worker_args.end());
  return argv;
}

TEST(WorkerMpiTest, ThreeRanksTrainAndTheServerReportsIt) {
  const std::string dir = testing::MakeTempDir("mpi");
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto run = RunCommand(Mpirun(3, {"--server=" + (*server)->address(), "--train_limit=1200", "--steps=30",
                                   "--log_every=10"}),
                        absl::Seconds(240));
  ASSERT_EQ(run.exit_code, 0) << run.output << (*server)->log();
  EXPECT_NE(run.output.find("step 30/30"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("final test accuracy"), std::string::npos) << run.output;

  auto json = RunCommand({GRADACC_CLI_BIN, "status", "--json", "--server=" + (*server)->address()});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  v1::Status status;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.output, &status).ok()) << json.output;
  EXPECT_EQ(status.state(), v1::JOB_STATE_DONE);
  EXPECT_EQ(status.step(), 30u);
  ASSERT_EQ(status.workers_size(), 3);
  for (const auto& w : status.workers()) EXPECT_EQ(w.contributions(), 30u) << w.worker();
  ASSERT_EQ(status.loss_history_size(), 30);
  double early = 0, late = 0;
  for (int i = 0; i < 5; ++i) {
    early += status.loss_history(i).loss();
    late += status.loss_history(25 + i).loss();
  }
  EXPECT_LT(late, 0.8 * early) << "loss did not fall: " << early / 5 << " -> " << late / 5;
  EXPECT_GT(status.test_accuracy(), 0.5);  // 10 classes: chance is 0.1
  EXPECT_EQ(status.test_accuracy_step(), 30u);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

// One run of the job (30 steps, 3 ranks) with these worker flags: the final
// parameters (bytes of the safetensors file) and the status.
std::pair<std::string, v1::Status> RunPath(const std::string& tag, const std::vector<std::string>& flags) {
  const std::string dir = testing::MakeTempDir(tag);
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors"});
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return {};
  std::vector<std::string> args = {"--server=" + (*server)->address(), "--train_limit=1200", "--steps=30"};
  args.insert(args.end(), flags.begin(), flags.end());
  auto run = RunCommand(Mpirun(3, args), absl::Seconds(240));
  EXPECT_EQ(run.exit_code, 0) << run.output << (*server)->log();
  v1::Status status = testing::CliStatus((*server)->address());
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  return {testing::ReadFile(dir + "/final.safetensors"), status};
}

TEST(WorkerMpiTest, EveryPathGivesTheSameBits) {
  const auto [grpc, grpc_status] = RunPath("path_grpc", {"--shared_memory=false"});
  ASSERT_FALSE(grpc.empty());
  for (const auto& w : grpc_status.workers()) EXPECT_EQ(TransportLabel(w, grpc_status), "gRPC");

  const auto [shm, shm_status] = RunPath("path_shm", {});
  for (const auto& w : shm_status.workers()) EXPECT_EQ(TransportLabel(w, shm_status), "shared memory");
  EXPECT_EQ(shm, grpc) << "shared memory and gRPC differ";

  // One host, one group: rank 0 adds ranks 1 and 2 in rank order and pushes
  // for all three.
  for (const bool shared_memory : {true, false}) {
    const auto [hier, hier_status] =
        RunPath(shared_memory ? "path_hier_shm" : "path_hier_grpc",
                {"--hierarchical", absl::StrCat("--shared_memory=", shared_memory)});
    ASSERT_EQ(hier_status.workers_size(), 3);
    EXPECT_EQ(TransportLabel(hier_status.workers(0), hier_status), shared_memory ? "shared memory" : "gRPC");
    for (int k = 1; k < 3; ++k) {
      EXPECT_EQ(TransportLabel(hier_status.workers(k), hier_status), "via worker 0 (hierarchical)");
      EXPECT_EQ(hier_status.workers(k).contributions(), 30u);
    }
    EXPECT_EQ(hier_status.contributions_accepted(), 90u);
    EXPECT_EQ(hier, grpc) << "hierarchical (shared memory " << shared_memory << ") differs from the flat run";
  }
}

// Each bad argument: a non-zero exit and a message that says what is wrong.
void ExpectRejected(const std::vector<std::string>& args, const std::string& words) {
  auto run = RunCommand(Mpirun(1, args), absl::Seconds(60));
  EXPECT_NE(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find(words), std::string::npos) << "expected '" << words << "' in:\n" << run.output;
}

TEST(WorkerArgsTest, BadArgumentsAreRejectedClearly) {
  ExpectRejected({"--server=127.0.0.1:1", "--data_dir=/nonexistent"}, "cannot open dataset file '/nonexistent/");
  ExpectRejected({"--server=127.0.0.1:1", "--model=resnet"}, "unknown --model 'resnet'");
  ExpectRejected({"--server=127.0.0.1:1", "--device=tpu"}, "unknown --device 'tpu'");
  ExpectRejected({"--data_dir=/usr/share/datasets/fashion-mnist"}, "--server=HOST:PORT is required");
  // Port 1 on loopback: nothing listens; the wait is bounded by the flag.
  const absl::Time start = absl::Now();
  ExpectRejected({"--server=127.0.0.1:1", "--connect_timeout_s=2"}, "cannot reach gradacc server at 127.0.0.1:1");
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

TEST(WorkerArgsTest, CudaRequestWithoutCudaIsRejected) {
  auto run = RunCommand(Mpirun(1, {"--server=127.0.0.1:1", "--device=cuda", "--connect_timeout_s=2"}),
                        absl::Seconds(60));
  if (run.output.find("no CUDA GPU") == std::string::npos &&
      run.output.find("built without CUDA") == std::string::npos) {
    // A machine with a GPU gets past the device check and fails on the
    // unreachable server instead.
    EXPECT_NE(run.output.find("cannot reach"), std::string::npos) << run.output;
  }
  EXPECT_NE(run.exit_code, 0) << run.output;
}

TEST(WorkerArgsTest, WrongRankCountOrModelForTheJob) {
  const std::string dir = testing::MakeTempDir("mpi_args");
  std::ofstream(dir + "/job.textproto") << kJob;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto"});
  ASSERT_TRUE(server.ok()) << server.status();
  ExpectRejected({"--server=" + (*server)->address(), "--train_limit=100"},
                 "expects 3 workers but mpirun started 1 ranks");
  auto run = RunCommand(Mpirun(3, {"--server=" + (*server)->address(), "--train_limit=100", "--hidden=64"}),
                        absl::Seconds(60));
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.output.find("is not the server's job model"), std::string::npos) << run.output;
  run = RunCommand(Mpirun(3, {"--server=" + (*server)->address(), "--train_limit=100", "--epochs=2"}),
                   absl::Seconds(60));
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.output.find("--epochs=2 is 2 steps"), std::string::npos) << run.output;
  // Nothing was pushed by any of these.
  auto json = RunCommand({GRADACC_CLI_BIN, "status", "--json", "--server=" + (*server)->address()});
  v1::Status status;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.output, &status).ok()) << json.output;
  EXPECT_EQ(status.contributions_accepted(), 0u);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

}  // namespace
}  // namespace gradacc
