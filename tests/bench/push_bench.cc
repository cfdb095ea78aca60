// Push and pull throughput of ONE worker (tests/bench/run.sh starts the
// server with a two-worker job; this process is both workers). Per window,
// untimed: fill grad(), record a micro-batch; timed: worker 0's
// Client::Push() (it never completes the window, so it is the transfer
// alone); untimed: worker 1 pushes (completing the window; its push is
// answered once the step is published); timed: worker 0's Client::Pull() of
// the new version. Prints median GB/s of each (payload = P f32 = 4P bytes)
// as RESULT lines.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/mutex.h"
#include "tests/bench/bench_util.h"
#include "worker/client/client.h"

ABSL_FLAG(std::string, server, "", "gradacc-server HOST:PORT");
ABSL_FLAG(std::string, shm, "off", "on or off: ClientOptions.shared_memory");
ABSL_FLAG(int, warmup, 2, "untimed windows first");
ABSL_FLAG(double, timeout_s, 120, "bound on every wait");

namespace {

int Fail(const std::string& what) {
  absl::FPrintF(stderr, "gradacc_bench_push: %s\n", what);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  gradacc::KeepFreedMemoryForReuse();  // as gradacc-worker does
  gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_shm) != "on" && absl::GetFlag(FLAGS_shm) != "off") return Fail("--shm must be on or off");
  gradacc::ClientOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  options.worker = 0;
  options.shared_memory = absl::GetFlag(FLAGS_shm) == "on";
  const absl::Duration timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_s));
  options.connect_timeout = timeout;
  options.rpc_timeout = timeout;
  options.window_timeout = timeout;
  auto connected = gradacc::Client::Connect(options);
  if (!connected.ok()) return Fail(connected.status().ToString());
  gradacc::Client& client = **connected;
  if (client.job().window().num_workers() != 2) return Fail("the job must have exactly two workers");
  gradacc::ClientOptions closer_options = options;
  closer_options.worker = 1;
  auto closer_connected = gradacc::Client::Connect(closer_options);
  if (!closer_connected.ok()) return Fail(closer_connected.status().ToString());
  gradacc::Client& closer = **closer_connected;
  const uint64_t p = client.grad().size();
  const double bytes = 4.0 * static_cast<double>(p);
  const int warmup = absl::GetFlag(FLAGS_warmup);

  std::vector<double> push_gbps, pull_gbps;
  for (int i = 0; !client.done(); ++i) {
    const uint64_t v = client.version();
    gradacc::bench::FillGradient(client.grad().data(), p, 0, v);
    client.AddMicroBatch(1, 0.0);
    const double t0 = gradacc::bench::NowSeconds();
    auto pushed = client.Push();
    const double t1 = gradacc::bench::NowSeconds();
    if (!pushed.ok()) return Fail(pushed.status().ToString());
    // The second worker completes the window; its push returns once v + 1
    // is published.
    gradacc::bench::FillGradient(closer.grad().data(), p, 1, v);
    closer.AddMicroBatch(1, 0.0);
    auto closed = closer.Step();
    if (!closed.ok()) return Fail(closed.status().ToString());
    const double t2 = gradacc::bench::NowSeconds();
    absl::Status pulled = client.Pull(v + 1, timeout);
    const double t3 = gradacc::bench::NowSeconds();
    if (!pulled.ok()) return Fail(pulled.ToString());
    if (i >= warmup) {
      push_gbps.push_back(bytes / (t1 - t0) / 1e9);
      pull_gbps.push_back(bytes / (t3 - t2) / 1e9);
    }
  }
  const std::string transport = client.transport();
  (void)client.Leave();
  (void)closer.Leave();
  absl::FPrintF(stderr, "gradacc_bench_push: data moved through %s\n", transport);
  if (push_gbps.empty()) return Fail("no timed window (raise the job's total_steps above --warmup)");
  const std::string setting = options.shared_memory ? "shm" : "grpc";
  using gradacc::bench::Median;
  using gradacc::bench::PrintResult;
  PrintResult("push", "gradacc_push", p, 1, setting, "gbps_median", Median(push_gbps), "GB/s");
  PrintResult("push", "gradacc_push", p, 1, setting, "gbps_min", gradacc::bench::Min(push_gbps), "GB/s");
  PrintResult("push", "gradacc_push", p, 1, setting, "gbps_max", gradacc::bench::Max(push_gbps), "GB/s");
  PrintResult("push", "gradacc_pull", p, 1, setting, "gbps_median", Median(pull_gbps), "GB/s");
  PrintResult("push", "gradacc_pull", p, 1, setting, "gbps_min", gradacc::bench::Min(pull_gbps), "GB/s");
  PrintResult("push", "gradacc_pull", p, 1, setting, "gbps_max", gradacc::bench::Max(pull_gbps), "GB/s");
  const bool on_shm = transport.rfind("shared memory", 0) == 0;
  PrintResult("push", "gradacc_push", p, 1, setting, "ranks_on_shared_memory", on_shm ? 1 : 0, "n");
  return 0;
}
