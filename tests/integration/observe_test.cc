// Observability against real runs: Prometheus /metrics scraped during a
// run, the step ledger (gRPC, `gradacc steps --json`, the JSONL file) with a
// duplicate, a stale push and a lost worker, and the dashboard rendered by
// headless Chromium.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <regex>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/status_probe.h"
#include "tests/http_client.h"
#include "tests/subprocess.h"
#include "worker/dashboard/dashboard.h"

namespace gradacc {
namespace {

using testing::ReadFile;
using testing::RunCommand;
using testing::ServerProcess;
using testing::Subprocess;

const bool kMpiEnvironment = (testing::AllowMpiAsRoot(), true);

std::string Job(int steps, const std::string& window_extra = "") {
  return absl::StrCat(R"pb(
    job_id: "observe"
    model {
      tensors { name: "w" shape: [64, 33] init { uniform { low: -0.5 high: 0.5 } } }
      tensors { name: "b" shape: [33] }
    }
    optimizer { kind: KIND_SGD lr: 0.01 }
    window { num_workers: 3 micro_batches: 2 )pb",
                      window_extra, " }\n total_steps: ", steps, "\n");
}
constexpr uint64_t kModelBytes = (64 * 33 + 33) * 4;

std::unique_ptr<Subprocess> StartWorker(const std::string& dir, const std::string& address, int k, int delay_ms) {
  return testing::StartTestClient(dir, address, k,
                                  {"--micro_batches=2", absl::StrCat("--step_delay_ms=", delay_ms)});
}

// The body of a plain HTTP/1.1 GET on loopback (tests/http_client.h).
std::string HttpGet(int port, const std::string& path) { return testing::HttpGet(port, path).body; }

// name{labels} -> value, from the Prometheus text format.
std::map<std::string, double> ParseMetrics(const std::string& text) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    double v;
    if (space != absl::string_view::npos && absl::SimpleAtod(line.substr(space + 1), &v)) {
      out[std::string(line.substr(0, space))] = v;
    }
  }
  return out;
}

int ReadPort(const std::string& file) {
  for (int i = 0; i < 200; ++i) {
    const std::string t = ReadFile(file);
    if (!t.empty() && t.back() == '\n') return std::stoi(t);
    absl::SleepFor(absl::Milliseconds(25));
  }
  return 0;
}

// In-process (one gRPC channel a call), not a CLI process per poll.
v1::Status Status(const std::string& address) { return testing::StatusProbe(address).Get(); }

// A push header alone: enough for a duplicate or a stale push, which the
// server answers before any data.
grpc::Status PushHeaderOnly(v1::DataPlane::Stub& stub, uint32_t worker, uint64_t window, uint64_t key) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::PushResponse resp;
  auto writer = stub.Push(&ctx, &resp);
  v1::PushRequest req;
  req.mutable_header()->set_worker(worker);
  req.mutable_header()->set_window(window);
  req.mutable_header()->set_contribution_key(key);
  req.mutable_header()->set_samples(1);
  req.mutable_header()->set_num_elements(kModelBytes / 4);
  writer->Write(req);
  writer->WritesDone();
  return writer->Finish();
}

TEST(MetricsTest, ScrapedDuringARunTheyMatchWhatTheRunDid) {
  constexpr int kSteps = 12;
  const std::string dir = testing::MakeTempDir("metrics");
  std::ofstream(dir + "/job.textproto") << Job(kSteps);
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--metrics_listen=127.0.0.1:0",
                                           "--metrics_port_file=" + dir + "/metrics.port"});
  ASSERT_TRUE(server.ok()) << server.status();
  const int metrics_port = ReadPort(dir + "/metrics.port");
  ASSERT_GT(metrics_port, 0);
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < 3; ++k) workers.push_back(StartWorker(dir, (*server)->address(), k, 40));

  // Mid-run: a scrape while steps are being taken, and two duplicates.
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::DataPlane::NewStub(channel);
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (Status((*server)->address()).step() < 2 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(10));
  auto mid = ParseMetrics(HttpGet(metrics_port, "/metrics"));
  EXPECT_GE(mid["gradacc_steps_total{job=\"observe\"}"], 2);
  EXPECT_LT(mid["gradacc_steps_total{job=\"observe\"}"], kSteps) << "the run ended before the mid-run scrape";
  EXPECT_EQ(mid["gradacc_workers{job=\"observe\",state=\"alive\"}"], 3);
  EXPECT_EQ(PushHeaderOnly(*stub, 0, 0, 0).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(PushHeaderOnly(*stub, 1, 1, 1).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  for (auto& w : workers) ASSERT_EQ(w->Wait(absl::Seconds(60)), std::optional<int>(0));

  const std::string text = HttpGet(metrics_port, "/metrics");
  auto m = ParseMetrics(text);
  const std::string job = "{job=\"observe\"";
  EXPECT_EQ(m["gradacc_steps_total" + job + "}"], kSteps) << text;
  EXPECT_EQ(m["gradacc_job_done" + job + "}"], 1);
  EXPECT_EQ(m["gradacc_contributions_total" + job + ",outcome=\"accepted\"}"], 3 * kSteps);
  EXPECT_EQ(m["gradacc_contributions_total" + job + ",outcome=\"duplicate\"}"], 2);
  EXPECT_EQ(m["gradacc_contributions_total" + job + ",outcome=\"stale\"}"], 0);
  // Every accepted push carried the whole model once; every worker pulled the
  // initial version and each of the 12 new ones once.
  EXPECT_EQ(m["gradacc_received_bytes_total" + job + "}"], 3.0 * kSteps * kModelBytes);
  EXPECT_EQ(m["gradacc_sent_bytes_total" + job + "}"], 3.0 * (kSteps + 1) * kModelBytes);
  EXPECT_EQ(m["gradacc_step_duration_seconds_count" + job + "}"], kSteps);
  EXPECT_EQ(m["gradacc_step_duration_seconds_bucket" + job + ",le=\"+Inf\"}"], kSteps);
  EXPECT_GT(m["gradacc_step_duration_seconds_sum" + job + "}"], 0.03 * kSteps);  // workers sleep 40 ms a window
  EXPECT_EQ(m["gradacc_learning_rate" + job + "}"], 0.01);
  EXPECT_NE(text.find("# TYPE gradacc_step_duration_seconds histogram"), std::string::npos);
  EXPECT_NE(text.find("# TYPE gradacc_contributions_total counter"), std::string::npos);
  channel.reset();
  stub.reset();
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

TEST(LedgerTest, ShowsDuplicateStaleAndLostWorker) {
  constexpr int kSteps = 10;
  const std::string dir = testing::MakeTempDir("ledger");
  std::ofstream(dir + "/job.textproto") << Job(kSteps, "policy: POLICY_QUORUM quorum: 2 deadline_ms: 300");
  auto server = ServerProcess::Start(
      dir, {"--job=" + dir + "/job.textproto", "--ledger_file=" + dir + "/ledger.jsonl", "--worker_timeout_s=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < 3; ++k) workers.push_back(StartWorker(dir, address, k, 100));
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (Status(address).step() < 3 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(10));
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = v1::DataPlane::NewStub(channel);
  // A duplicate of worker 0's contribution to window 1, and a stale push of
  // worker 1 for window 1 under a new key.
  EXPECT_EQ(PushHeaderOnly(*stub, 0, 1, 1).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(PushHeaderOnly(*stub, 1, 1, 999).error_code(), grpc::StatusCode::ABORTED);
  workers[2]->Signal(SIGKILL);
  ASSERT_EQ(workers[2]->Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
  for (int k = 0; k < 2; ++k) ASSERT_EQ(workers[k]->Wait(absl::Seconds(60)), std::optional<int>(0));

  auto check = [&](const v1::GetStepsResponse& steps, const std::string& source) {
    SCOPED_TRACE(source);
    ASSERT_EQ(steps.steps_size(), kSteps);
    const v1::StepRecord& w1 = steps.steps(1);
    ASSERT_EQ(w1.window(), 1u);
    bool dup = false, stale = false;
    for (const auto& l : w1.late()) {
      dup |= l.worker() == 0 && l.outcome() == "duplicate" && l.contribution_key() == 1;
      stale |= l.worker() == 1 && l.outcome() == "stale" && l.contribution_key() == 999;
    }
    EXPECT_TRUE(dup) << w1.DebugString();
    EXPECT_TRUE(stale) << w1.DebugString();
    for (const auto& c : w1.contributions()) {
      if (c.worker() == 0) {
        EXPECT_EQ(c.duplicates(), 1u);
      }
      EXPECT_GT(c.grad_norm(), 0);
      EXPECT_GE(c.attempt(), 1u);
    }
    EXPECT_EQ(w1.contributions_size(), 3);
    const v1::StepRecord& last = steps.steps(kSteps - 1);
    EXPECT_EQ(std::vector<uint32_t>(last.missing_workers().begin(), last.missing_workers().end()),
              std::vector<uint32_t>{2});
    EXPECT_EQ(last.contributions_size(), 2);
    EXPECT_GT(last.lr(), 0);
    EXPECT_GT(last.grad_norm(), 0);
    EXPECT_GT(last.timing().wait_seconds(), 0.2);  // the deadline
  };
  {
    grpc::ClientContext ctx;
    auto control = v1::ControlPlane::NewStub(channel);
    v1::GetStepsResponse steps;
    ASSERT_TRUE(control->GetSteps(&ctx, v1::GetStepsRequest(), &steps).ok());
    check(steps, "gRPC GetSteps");
    grpc::ClientContext one;
    v1::GetStepsRequest r;
    r.set_from_step(2);
    r.set_to_step(2);
    v1::GetStepsResponse single;
    ASSERT_TRUE(control->GetSteps(&one, r, &single).ok());
    ASSERT_EQ(single.steps_size(), 1);
    EXPECT_EQ(single.steps(0).step(), 2u);
  }
  auto cli = RunCommand({GRADACC_CLI_BIN, "steps", "--json", "--server=" + address});
  ASSERT_EQ(cli.exit_code, 0) << cli.output;
  v1::GetStepsResponse from_cli;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(cli.output, &from_cli).ok()) << cli.output;
  check(from_cli, "gradacc steps --json");
  auto table = RunCommand({GRADACC_CLI_BIN, "steps", "--server=" + address, "--from=2", "--to=2"});
  EXPECT_NE(table.output.find("0:duplicate,1:stale"), std::string::npos) << table.output;
  auto ledger = ReadLedger(dir + "/ledger.jsonl");
  ASSERT_TRUE(ledger.ok()) << ledger.status();
  v1::GetStepsResponse from_file;
  for (auto& [step, r] : *ledger) *from_file.add_steps() = r;
  check(from_file, "ledger.jsonl");
  channel.reset();
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

std::string Chromium(const std::string& dir, const std::vector<std::string>& extra, const std::string& url) {
  static int profile = 0;
  std::vector<std::string> argv = {"/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                                   "--disable-quic", "--no-first-run", "--disable-background-networking",
                                   "--disable-component-update", "--disable-sync",
                                   absl::StrCat("--user-data-dir=", dir, "/chromium", profile++),
                                   "--virtual-time-budget=4000"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(url);
  return RunCommand(argv, absl::Seconds(60)).output;
}

std::string Attr(const std::string& dom, const std::string& element_id, const std::string& attr) {
  std::smatch m;
  const std::regex re("id=\"" + element_id + "\"[^>]*" + attr + "=\"([^\"]*)\"");
  return std::regex_search(dom, m, re) ? m[1].str() : "";
}

TEST(DashboardTest, ChromiumShowsTheRunsNumbers) {
  const std::string dir = testing::MakeTempDir("dashboard");
  // A real (small) Fashion-MNIST run: 3 ranks, 1500 samples, windows of
  // 3 x 2 x 25 = 150 samples, 3 epochs = 30 steps, accuracy every epoch.
  std::ofstream(dir + "/job.textproto") << R"pb(
    job_id: "dashboard"
    model {
      tensors { name: "fc1.weight" shape: [32, 784] init { fan_in_uniform { fan_in: 784 } } }
      tensors { name: "fc1.bias" shape: [32] init { fan_in_uniform { fan_in: 784 } } }
      tensors { name: "fc2.weight" shape: [10, 32] init { fan_in_uniform { fan_in: 32 } } }
      tensors { name: "fc2.bias" shape: [10] init { fan_in_uniform { fan_in: 32 } } }
    }
    optimizer { kind: KIND_ADAM lr: 0.005 }
    window { num_workers: 3 micro_batches: 2 micro_batch_size: 25 }
    total_steps: 30
    seed: 4
    worker_hints { key: "hidden" value: "32" }
  )pb";
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--ledger_file=" + dir + "/ledger.jsonl"});
  ASSERT_TRUE(server.ok()) << server.status();
  // The dashboard in-process (what `gradacc dashboard` runs), so the test
  // waits on what it has seen instead of sleeping.
  DashboardOptions options;
  options.server = (*server)->address();
  options.listen = "127.0.0.1:0";
  auto dashboard = Dashboard::Start(options);
  ASSERT_TRUE(dashboard.ok()) << dashboard.status();
  const std::string url = absl::StrCat("http://127.0.0.1:", (*dashboard)->port(), "/");

  auto run = RunCommand({GRADACC_MPIEXEC, "-np", "3", "--oversubscribe", "--allow-run-as-root", "-x",
                         "OPENBLAS_NUM_THREADS=1", GRADACC_WORKER_BIN, "--server=" + (*server)->address(),
                         "--train_limit=1500"},
                        absl::Seconds(180));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  // The end of the run as WatchStatus reports it: done, every step, every
  // evaluation, every worker gone.
  const bool saw_the_end = (*dashboard)->WaitUntil(
      [](const Dashboard::View& v) {
        if (v.status == nullptr || v.steps != 30 || v.status->state() != v1::JOB_STATE_DONE ||
            v.status->accuracy_history_size() != 3) {
          return false;
        }
        for (const auto& w : v.status->workers()) {
          if (w.state() != v1::WORKER_STATE_LEFT) return false;
        }
        return true;
      },
      absl::Seconds(60));
  ASSERT_TRUE(saw_the_end) << HttpGet((*dashboard)->port(), "/api/status");

  std::string dom = Chromium(dir, {"--dump-dom"}, url);
  EXPECT_EQ(Attr(dom, "loss-curve", "data-points"), "30") << dom;
  double first = 0, last = 0;
  ASSERT_TRUE(absl::SimpleAtod(Attr(dom, "loss-curve", "data-first"), &first)) << dom;
  ASSERT_TRUE(absl::SimpleAtod(Attr(dom, "loss-curve", "data-last"), &last));
  EXPECT_LT(last, first) << "the loss curve does not fall";
  EXPECT_EQ(Attr(dom, "accuracy-curve", "data-points"), "3") << dom;
  for (int w = 0; w < 3; ++w) {
    EXPECT_TRUE(std::regex_search(dom, std::regex(absl::StrCat("<tr data-worker=\"", w,
                                                               "\">.*?class=\"num contributions\">30<"))))
        << "workers table row " << w;
  }
  EXPECT_NE(dom.find("job dashboard · done · step 30 / 30"), std::string::npos);
  // The transport column, in the words of `gradacc status`.
  EXPECT_TRUE(std::regex_search(dom, std::regex("<td class=\"transport\">(shared memory|gRPC[^<]*)</td>"))) << dom;
  // The screenshot is kept as a test artifact.
  const std::string shot = GRADACC_ARTIFACT_DIR "/dashboard.png";
  Chromium(dir, {"--window-size=1280,860", "--screenshot=" + shot}, url);
  EXPECT_GT(ReadFile(shot).size(), 10000u) << "no screenshot at " << shot;

  // After the job: the server is gone, the dashboard still shows the run.
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  ASSERT_TRUE((*dashboard)->WaitUntil([](const Dashboard::View& v) { return !v.connected; }, absl::Seconds(30)));
  dom = Chromium(dir, {"--dump-dom"}, url);
  EXPECT_EQ(Attr(dom, "loss-curve", "data-points"), "30");
  EXPECT_NE(dom.find("server not reachable"), std::string::npos);

  // From the ledger alone.
  auto post = Subprocess::Start({GRADACC_CLI_BIN, "dashboard", "--ledger=" + dir + "/ledger.jsonl",
                                 "--listen=127.0.0.1:0", "--port_file=" + dir + "/dash2.port", "--server="},
                                dir + "/dashboard2.log");
  ASSERT_TRUE(post.ok());
  const int port2 = ReadPort(dir + "/dash2.port");
  ASSERT_GT(port2, 0) << ReadFile(dir + "/dashboard2.log");
  dom = Chromium(dir, {"--dump-dom"}, absl::StrCat("http://127.0.0.1:", port2, "/"));
  EXPECT_EQ(Attr(dom, "loss-curve", "data-points"), "30");
  (*post)->Signal(SIGTERM);
  EXPECT_EQ((*post)->Wait(absl::Seconds(10)), std::optional<int>(0));
}

}  // namespace
}  // namespace gradacc
