// The end-to-end window of gradacc: every rank of `mpirun -np M` is one
// worker of a job with M workers (tests/bench/run.sh starts the server).
// Per window, untimed: fill grad() deterministically and record one
// micro-batch; timed: MPI_Barrier, t0, Client::Step() (push, the server's
// reduction and optimizer step, broadcast, every worker holding the new
// parameters, gradients zeroed), MPI_Barrier, t1. A window's time is the
// largest t1 - t0 over the ranks; rank 0 prints the median (after --warmup
// windows) as RESULT lines (tests/bench/bench_util.h).
//
// For the simulated-hosts benchmark (tests/bench/multihost.sh): --hierarchical
// (the ranks of a host reduce into their leader, worker/training/
// group_client.h), --wire_format, --setting (the label of the RESULT lines)
// and --params_out (rank 0 writes the final parameters, raw f32, for the
// bit-identity check).
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "common/mutex.h"
#include "tests/bench/bench_util.h"
#include "worker/client/client.h"
#include "worker/training/group_client.h"
#include "worker/training/training.h"

ABSL_FLAG(std::string, server, "", "gradacc-server HOST:PORT");
ABSL_FLAG(std::string, shm, "on", "on or off: ClientOptions.shared_memory");
ABSL_FLAG(int, warmup, 2, "untimed windows first");
ABSL_FLAG(double, timeout_s, 300, "bound on connecting and on every window");
ABSL_FLAG(bool, hierarchical, false, "ranks sharing a host reduce into their leader, which alone pushes");
ABSL_FLAG(std::string, wire_format, "f32", "f32, bf16 or f16: ClientOptions.wire_format");
ABSL_FLAG(int64_t, chunk_elements, 0, "elements per pushed chunk (0: ClientOptions' default)");
ABSL_FLAG(std::string, setting, "", "label of the RESULT lines (default: shm or grpc)");
ABSL_FLAG(std::string, phase_file, "", "rank 0 appends the timed windows' start and end times here");
ABSL_FLAG(std::string, params_out, "", "rank 0 writes the final parameters here (raw little-endian f32)");

namespace {

[[noreturn]] void Abort(int rank, const std::string& what) {
  absl::FPrintF(stderr, "gradacc_bench_window[%d]: %s\n", rank, what);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

}  // namespace

int main(int argc, char** argv) {
  gradacc::KeepFreedMemoryForReuse();  // as gradacc-worker does
  gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
  MPI_Init(&argc, &argv);
  absl::ParseCommandLine(argc, argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  if (absl::GetFlag(FLAGS_shm) != "on" && absl::GetFlag(FLAGS_shm) != "off") Abort(rank, "--shm must be on or off");
  gradacc::ClientOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  options.worker = static_cast<uint32_t>(rank);
  options.shared_memory = absl::GetFlag(FLAGS_shm) == "on";
  if (absl::GetFlag(FLAGS_chunk_elements) > 0) options.chunk_elements = absl::GetFlag(FLAGS_chunk_elements);
  const std::string wire = absl::GetFlag(FLAGS_wire_format);
  if (wire == "bf16") {
    options.wire_format = gradacc::v1::WIRE_FORMAT_BF16;
  } else if (wire == "f16") {
    options.wire_format = gradacc::v1::WIRE_FORMAT_F16;
  } else if (wire != "f32") {
    Abort(rank, "--wire_format must be f32, bf16 or f16");
  }
  const absl::Duration timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  options.connect_timeout = timeout;
  options.rpc_timeout = timeout;
  options.window_timeout = timeout;
  std::unique_ptr<gradacc::Client> plain;
  std::unique_ptr<gradacc::TrainingClient> training;
  if (absl::GetFlag(FLAGS_hierarchical)) {
    auto group = gradacc::GroupClient::Connect(options);
    if (!group.ok()) Abort(rank, group.status().ToString());
    training = *std::move(group);
  } else {
    auto connected = gradacc::Client::Connect(options);
    if (!connected.ok()) Abort(rank, connected.status().ToString());
    plain = *std::move(connected);
    training = std::make_unique<gradacc::ClientAdapter>(*plain);
  }
  gradacc::TrainingClient& client = *training;
  if (client.job().window().num_workers() != static_cast<uint32_t>(size)) {
    Abort(rank, absl::StrFormat("the job has %d workers but mpirun started %d ranks",
                                client.job().window().num_workers(), size));
  }
  const uint64_t p = client.grad().size();
  const int warmup = absl::GetFlag(FLAGS_warmup);

  std::vector<double> windows;
  int reconnects = 0;
  for (int i = 0; !client.done(); ++i) {
    const uint64_t v = client.version();
    gradacc::bench::FillGradient(client.grad().data(), p, rank, v);
    client.AddMicroBatch(1, 0.0);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0 && i == warmup) gradacc::bench::MarkPhase(absl::GetFlag(FLAGS_phase_file), "start");
    const double t0 = gradacc::bench::NowSeconds();
    auto step = client.Step();
    if (!step.ok()) Abort(rank, absl::StrFormat("window %d: %s", v, step.status().ToString()));
    MPI_Barrier(MPI_COMM_WORLD);
    const double mine = gradacc::bench::NowSeconds() - t0;
    if (step->stale || step->version != v + 1) Abort(rank, absl::StrFormat("window %d did not step cleanly", v));
    reconnects += step->reconnects;
    double slowest = 0;
    MPI_Reduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (i >= warmup) windows.push_back(slowest);
  }
  if (rank == 0) gradacc::bench::MarkPhase(absl::GetFlag(FLAGS_phase_file), "end");
  // Which transport the data really took ("shared memory", or "gRPC" with
  // the reason when shared memory was asked for and not used).
  const std::string transport = client.transport();
  int on_shm = transport.rfind("shared memory", 0) == 0 ? 1 : 0, ranks_on_shm = 0;
  MPI_Reduce(&on_shm, &ranks_on_shm, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0 && !absl::GetFlag(FLAGS_params_out).empty()) {
    std::ofstream out(absl::GetFlag(FLAGS_params_out), std::ios::binary | std::ios::trunc);
    const absl::Span<const float> params = client.params();
    out.write(reinterpret_cast<const char*>(params.data()), static_cast<std::streamsize>(params.size() * sizeof(float)));
    if (!out.good()) Abort(rank, "cannot write --params_out");
  }
  (void)client.Leave();
  int all_reconnects = 0;
  MPI_Reduce(&reconnects, &all_reconnects, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    if (windows.empty()) Abort(rank, "no timed window (raise the job's total_steps above --warmup)");
    if (all_reconnects > 0) absl::FPrintF(stderr, "gradacc_bench_window: %d reconnects during the run\n", all_reconnects);
    const std::string setting = !absl::GetFlag(FLAGS_setting).empty() ? absl::GetFlag(FLAGS_setting)
                                : options.shared_memory                ? "shm"
                                                                       : "grpc";
    gradacc::bench::PrintTimes("window", "gradacc", p, size, setting, "window", windows);
    gradacc::bench::PrintResult("window", "gradacc", p, size, setting, "windows", static_cast<double>(windows.size()),
                                "n");
    // This worker's peak resident memory (tests/bench/scale.sh: bytes per
    // parameter on a worker).
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmHWM:", 0) == 0) {
        gradacc::bench::PrintResult("window", "gradacc_worker", p, size, setting, "peak_rss",
                                    std::strtod(line.c_str() + 6, nullptr) / 1024, "MB");
      }
    }
    gradacc::bench::PrintResult("window", "gradacc", p, size, setting, "ranks_on_shared_memory", ranks_on_shm, "n");
    absl::FPrintF(stderr, "gradacc_bench_window: rank 0 moved data through %s\n", transport);
  }
  training.reset();
  plain.reset();
  MPI_Finalize();
  return 0;
}
