// Stragglers named, against the real server, test workers and dashboard: a
// worker of a QUORUM job is SIGSTOPped while it computes; within two windows
// status, /metrics, the step ledger and the dashboard name it a straggler
// and the slowest worker; after SIGCONT its late push is refused as stale and
// counted once, and it stops being a straggler once it contributes again.
// Ports chosen by the OS; every wait bounded.
#include <signal.h>

#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/http_client.h"
#include "tests/status_probe.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::HttpGet;
using testing::ReadFile;
using testing::ServerProcess;
using testing::StatusProbe;
using testing::Subprocess;

constexpr int kWorkers = 3;
constexpr uint32_t kStopped = 2;
constexpr int kStepDelayMs = 300;

constexpr char kJob[] = R"pb(
  job_id: "stragglers"
  model { tensors { name: "w" shape: [24, 8] } tensors { name: "b" shape: [8] } }
  optimizer { kind: KIND_SGD lr: 0.05 }
  window { num_workers: 3 micro_batches: 1 policy: POLICY_QUORUM quorum: 2 deadline_ms: 1000 }
  total_steps: 16
)pb";

// The ledger file's records, the last line of a step winning.
std::map<uint64_t, v1::StepRecord> Ledger(const std::string& path) {
  std::map<uint64_t, v1::StepRecord> steps;
  for (absl::string_view line : absl::StrSplit(ReadFile(path), '\n', absl::SkipEmpty())) {
    v1::StepRecord r;
    if (google::protobuf::util::JsonStringToMessage(std::string(line), &r).ok()) steps[r.step()] = r;
  }
  return steps;
}

bool Contains(const google::protobuf::RepeatedField<uint32_t>& list, uint32_t v) {
  return std::find(list.begin(), list.end(), v) != list.end();
}

TEST(StragglerTest, StoppedQuorumWorkerIsNamedWithinTwoWindowsAndItsLatePushCountedOnce) {
  const std::string dir = testing::MakeTempDir("straggler");
  std::ofstream(dir + "/job.textproto") << kJob;
  const std::string ledger = dir + "/ledger.jsonl";
  auto server = ServerProcess::Start(
      dir, {"--job=" + dir + "/job.textproto", "--ledger_file=" + ledger, "--metrics_listen=127.0.0.1:0",
            "--metrics_port_file=" + dir + "/metrics.port", "--worker_timeout_s=30", "--straggler_windows=2"});
  ASSERT_TRUE(server.ok()) << server.status();
  const int metrics_port = testing::WaitForPortFile(dir + "/metrics.port");
  ASSERT_NE(metrics_port, 0);
  auto dashboard = Subprocess::Start({GRADACC_CLI_BIN, "dashboard", "--server=" + (*server)->address(),
                                      "--listen=127.0.0.1:0", "--port_file=" + dir + "/dashboard.port"},
                                     dir + "/dashboard.log");
  ASSERT_TRUE(dashboard.ok()) << dashboard.status();
  const int dashboard_port = testing::WaitForPortFile(dir + "/dashboard.port");
  ASSERT_NE(dashboard_port, 0) << ReadFile(dir + "/dashboard.log");
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) {
    workers.push_back(testing::StartTestClient(dir, (*server)->address(), k,
                                               {"--micro_batches=1", absl::StrCat("--step_delay_ms=", kStepDelayMs),
                                                // Through gRPC: a worker on shared memory that wakes up
                                                // finds the newest parameters in place and never pushes late.
                                                "--shared_memory=false"}));
  }
  StatusProbe probe((*server)->address());

  // Stop worker 2 while it computes (it sleeps kStepDelayMs after pulling):
  // in a window, at least the 3rd, that opened 30-150 ms ago and has
  // nothing from it.
  v1::Status s;
  ASSERT_TRUE(probe.WaitFor(
      [](const v1::Status& st) {
        const int64_t open_for = st.server_time_unix_micros() - st.window().opened_unix_micros();
        return st.step() >= 2 && st.workers_size() == kWorkers &&
               st.workers(kStopped).state() == v1::WORKER_STATE_JOINED && open_for > 30000 && open_for < 150000;
      },
      absl::Seconds(60), &s))
      << s.DebugString();
  workers[kStopped]->Signal(SIGSTOP);
  const uint64_t stopped_in = s.step();

  // Named within two windows: the window it was stopped in and the next.
  ASSERT_TRUE(probe.WaitFor([](const v1::Status& st) { return Contains(st.stragglers(), kStopped); },
                            absl::Seconds(30), &s))
      << s.DebugString();
  EXPECT_LE(s.step(), stopped_in + 2) << "named a straggler after more than two windows";
  EXPECT_TRUE(s.workers(kStopped).straggler());
  EXPECT_GE(s.workers(kStopped).late_windows(), 2u);
  EXPECT_EQ(s.straggler_windows(), 2u);
  const v1::WindowArrivals& a = s.last_window_arrivals();
  EXPECT_EQ(a.slowest_worker(), kStopped) << a.DebugString();
  EXPECT_TRUE(a.slowest_missing());
  EXPECT_GT(a.slowest_behind_median_seconds(), 0.4) << a.DebugString();
  ASSERT_EQ(a.workers_size(), kWorkers);
  EXPECT_TRUE(a.workers(kStopped).missing());
  EXPECT_GE(a.workers(kStopped).after_open_seconds(), 1.0);  // the deadline
  EXPECT_FALSE(a.workers(0).missing());

  const std::string metrics = HttpGet(metrics_port, "/metrics").body;
  EXPECT_TRUE(absl::StrContains(metrics, "gradacc_straggler{job=\"stragglers\",worker=\"2\"} 1")) << metrics;
  EXPECT_TRUE(absl::StrContains(metrics, "gradacc_straggler{job=\"stragglers\",worker=\"0\"} 0")) << metrics;
  EXPECT_TRUE(absl::StrContains(
      metrics, "gradacc_slowest_worker_behind_median_seconds{job=\"stragglers\",worker=\"2\",missing=\"true\"}"))
      << metrics;

  // The ledger file: a step whose record names it slowest and a straggler.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  bool in_ledger = false;
  while (!in_ledger && absl::Now() < give_up) {
    for (const auto& [step, r] : Ledger(ledger)) {
      in_ledger = in_ledger || (r.arrivals().slowest_worker() == kStopped && Contains(r.arrivals().stragglers(), kStopped) &&
                                Contains(r.missing_workers(), kStopped));
    }
    if (!in_ledger) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(in_ledger) << ReadFile(ledger);

  // The dashboard shows it.
  std::string shown;
  const absl::Time dash_give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < dash_give_up) {
    shown = HttpGet(dashboard_port, "/api/status").body;
    if (absl::StrContains(shown, "straggler: missing from")) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(absl::StrContains(shown, "straggler: missing from")) << shown;
  EXPECT_TRUE(absl::StrContains(shown, "STRAGGLERS: worker 2")) << shown;

  // Continued as a window opens, it catches up within that window.
  ASSERT_TRUE(probe.WaitFor(
      [](const v1::Status& st) { return st.server_time_unix_micros() - st.window().opened_unix_micros() < 100000; },
      absl::Seconds(30), &s));
  workers[kStopped]->Signal(SIGCONT);
  for (int k = 0; k < kWorkers; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  s = probe.Get();
  EXPECT_EQ(s.step(), 16u);
  // Its push computed before the stop came after its window closed: stale,
  // counted once (status, the worker's count and the ledger agree), never
  // as rejected; then it contributed again and is no straggler any more.
  const v1::WorkerStatus& w = s.workers(kStopped);
  EXPECT_GE(w.stale(), 1u) << w.DebugString();
  EXPECT_LE(w.stale(), 2u) << w.DebugString();
  EXPECT_EQ(s.contributions_stale(), w.stale());
  EXPECT_EQ(w.rejected(), 0u);
  EXPECT_EQ(s.contributions_rejected(), 0u);
  EXPECT_FALSE(w.straggler());
  EXPECT_EQ(w.late_windows(), 0u);
  EXPECT_TRUE(s.stragglers().empty());
  EXPECT_GT(w.last_window(), stopped_in + 1);
  uint64_t stale_records = 0;
  for (const auto& [step, r] : Ledger(ledger)) {
    for (const v1::LateRecord& l : r.late()) stale_records += l.worker() == kStopped && l.outcome() == "stale";
  }
  EXPECT_EQ(stale_records, w.stale()) << ReadFile(ledger);
  EXPECT_NE((*server)->log().find("worker 2 is a STRAGGLER"), std::string::npos) << (*server)->log();
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

}  // namespace
}  // namespace gradacc
