// Fault tests: the real gradacc-server and worker processes, killed with
// SIGKILL, restarted, behind a connection-cutting proxy, on corrupt
// checkpoints. Every wait is bounded.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/mutex.h"
#include "common/safetensors.h"
#include "google/protobuf/util/json_util.h"
#include "gradacc/v1/control.grpc.pb.h"
#include "gradacc/v1/data.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/status_probe.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::ReadFile;
using testing::RunCommand;
using testing::ServerProcess;
using testing::Subprocess;

constexpr int kWorkers = 3;
constexpr int kSteps = 12;

// Adam, so that optimizer state must survive restarts too.
std::string Job(const std::string& extra = "") {
  return absl::StrCat(R"pb(
    job_id: "fault"
    model {
      tensors { name: "w" shape: [64, 33] init { uniform { low: -0.5 high: 0.5 } } }
      tensors { name: "b" shape: [33] }
    }
    optimizer { kind: KIND_ADAM lr: 0.01 }
    window { num_workers: 3 micro_batches: 2 )pb",
                      extra, R"pb( }
    total_steps: 12
    seed: 21
  )pb");
}

// Workers on this host use shared memory unless told otherwise.
std::unique_ptr<Subprocess> StartWorker(const std::string& dir, const std::string& address, int k,
                                        int step_delay_ms = 0, bool shared_memory = true) {
  return testing::StartTestClient(dir, address, k,
                                  {"--micro_batches=2", "--chunk_elements=300",
                                   absl::StrCat("--step_delay_ms=", step_delay_ms),
                                   absl::StrCat("--shared_memory=", shared_memory)});
}

// The transport under test: shared memory (true) or gRPC alone (false).
class TransportTest : public ::testing::TestWithParam<bool> {};
std::string TransportName(const ::testing::TestParamInfo<bool>& info) {
  return info.param ? "SharedMemory" : "Grpc";
}

std::vector<float> ReadParams(const std::string& path) {
  auto file = ReadSafetensorsFile(path);
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return {};
  std::vector<float> out = file->tensors.at("w").data;
  out.insert(out.end(), file->tensors.at("b").data.begin(), file->tensors.at("b").data.end());
  return out;
}

bool Same(const std::vector<float>& a, const std::vector<float>& b) {
  return !a.empty() && a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// In-process (one gRPC channel a call), not a CLI process per poll.
v1::Status Status(const std::string& address) { return testing::StatusProbe(address).Get(); }

// The undisturbed run every fault run must reproduce bit for bit, made
// through gRPC alone: the fault runs on shared memory must match it too.
std::vector<float> Reference(const std::string& job, const std::string& tag) {
  const std::string dir = testing::MakeTempDir("ref_" + tag);
  std::ofstream(dir + "/job.textproto") << job;
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors"});
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return {};
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) workers.push_back(StartWorker(dir, (*server)->address(), k, 0, false));
  for (int k = 0; k < kWorkers; ++k) {
    EXPECT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
  }
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  return ReadParams(dir + "/final.safetensors");
}

using ServerKillTest = TransportTest;
TEST_P(ServerKillTest, KilledThreeTimesAndRestartedGivesBitIdenticalParameters) {
  const std::vector<float> reference = Reference(Job(), "kill");
  ASSERT_FALSE(reference.empty());

  const std::string dir = testing::MakeTempDir("kill");
  std::ofstream(dir + "/job.textproto") << Job();
  const std::vector<std::string> base = {"--job=" + dir + "/job.textproto", "--checkpoint_dir=" + dir + "/ckpt",
                                         "--output=" + dir + "/final.safetensors"};
  // Mid-push (window 3, after its 2nd contribution), mid-broadcast (window
  // 6's step is durable, one parked pull answered), between windows (window
  // 9 fully published).
  const std::vector<std::string> kills = {"--kill_at=push:3:2", "--kill_at=mid_broadcast:6",
                                          "--kill_at=after_publish:9", ""};
  std::vector<std::string> flags = base;
  flags.push_back(kills[0]);
  auto server = ServerProcess::Start(dir, flags);
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();
  const std::string address = (*server)->address();
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) workers.push_back(StartWorker(dir, address, k, 0, GetParam()));
  std::string logs;
  for (size_t i = 1; i < kills.size(); ++i) {
    auto code = (*server)->process().Wait(absl::Seconds(60));
    ASSERT_EQ(code, std::optional<int>(128 + SIGKILL)) << (*server)->log();
    logs += (*server)->log();
    flags = base;
    if (!kills[i].empty()) flags.push_back(kills[i]);
    // The same port: the workers reconnect to the address they know.
    server = ServerProcess::Start(dir, flags, port);
    ASSERT_TRUE(server.ok()) << server.status();
  }
  for (int k = 0; k < kWorkers; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  logs += (*server)->log();
  EXPECT_NE(logs.find("failpoint push:3:2 reached"), std::string::npos) << logs;
  EXPECT_NE(logs.find("failpoint mid_broadcast:6 reached"), std::string::npos) << logs;
  EXPECT_NE(logs.find("failpoint after_publish:9 reached"), std::string::npos) << logs;
  EXPECT_NE(logs.find("resuming job 'fault' from checkpoint"), std::string::npos) << logs;
  const v1::Status status = Status(address);
  EXPECT_EQ(status.step(), static_cast<uint64_t>(kSteps));
  EXPECT_EQ(status.server_restarts(), 3u);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  EXPECT_TRUE(Same(ReadParams(dir + "/final.safetensors"), reference))
      << "parameters after three SIGKILLs differ from the undisturbed run";
  if (GetParam()) {
    // Killed with workers waiting on their mailbox and on the bell: the
    // shared-memory fast path (common/shm_fast_path.h) is what they used.
    for (int k = 0; k < kWorkers; ++k) {
      const std::string log = ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
      EXPECT_NE(log.find("transport shared memory (fast path"), std::string::npos) << log;
    }
  }
}
INSTANTIATE_TEST_SUITE_P(Transports, ServerKillTest, ::testing::Bool(), TransportName);

// A worker SIGSTOPped past its peers' window timeout (WAIT policy): the
// peers' waits end at their window timeout on either transport (on shared
// memory they wait on the bell, then in a parked pull), the stopped worker
// goes on when continued, the peers started again rejoin, and the job ends
// bit-identical to the undisturbed run.
using StoppedWorkerTest = TransportTest;
TEST_P(StoppedWorkerTest, StoppedPastTheWindowTimeoutEndsBoundedAndBitIdentical) {
  const std::vector<float> reference = Reference(Job(), "stop");
  ASSERT_FALSE(reference.empty());
  const std::string dir = testing::MakeTempDir("stopped");
  std::ofstream(dir + "/job.textproto") << Job();
  auto server =
      ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  // The peers give up after 2 s; the stopped worker has time to go on.
  auto start = [&](int k) {
    return testing::StartTestClient(
        dir, address, k,
        {"--micro_batches=2", "--step_delay_ms=50", absl::StrCat("--window_timeout_s=", k == 1 ? 60 : 2),
         absl::StrCat("--shared_memory=", GetParam())});
  };
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) workers.push_back(start(k));
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (Status(address).step() < 3 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(5));
  workers[1]->Signal(SIGSTOP);
  const absl::Time stopped = absl::Now();
  // The peers give up on the window within their timeout (2 s) and a margin.
  for (int k : {0, 2}) {
    const std::optional<int> code = workers[k]->Wait(absl::Seconds(15));
    ASSERT_TRUE(code.has_value()) << "worker " << k << " still waits " << absl::Now() - stopped;
    EXPECT_EQ(*code, 1) << ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
  }
  EXPECT_LT(absl::Now() - stopped, absl::Seconds(2) + absl::Seconds(8));
  const std::string given_up = ReadFile(absl::StrCat(dir, "/worker0.log"));
  EXPECT_NE(given_up.find("DEADLINE_EXCEEDED"), std::string::npos) << given_up;
  if (GetParam()) {
    EXPECT_NE(given_up.find("transport shared memory (fast path"), std::string::npos) << given_up;
  }
  workers[1]->Signal(SIGCONT);
  for (int k : {0, 2}) workers[k] = start(k);  // the same ranks again
  for (int k = 0; k < kWorkers; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  EXPECT_EQ(Status(address).step(), static_cast<uint64_t>(kSteps));
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  EXPECT_TRUE(Same(ReadParams(dir + "/final.safetensors"), reference))
      << "parameters after a stopped worker differ from the undisturbed run";
}
INSTANTIATE_TEST_SUITE_P(Transports, StoppedWorkerTest, ::testing::Bool(), TransportName);

TEST(WorkerKillTest, QuorumKeepsTrainingWithoutAKilledWorker) {
  const std::string dir = testing::MakeTempDir("quorum");
  std::ofstream(dir + "/job.textproto")
      << Job("policy: POLICY_QUORUM quorum: 2 deadline_ms: 300");
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--worker_timeout_s=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) workers.push_back(StartWorker(dir, address, k, /*step_delay_ms=*/100));
  // Let a few windows pass with everyone, then kill worker 2.
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (Status(address).step() < 3 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(20));
  workers[2]->Signal(SIGKILL);
  ASSERT_EQ(workers[2]->Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
  for (int k = 0; k < 2; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  const v1::Status s = Status(address);
  EXPECT_EQ(s.step(), static_cast<uint64_t>(kSteps));
  ASSERT_EQ(s.last_step_missing_workers_size(), 1);
  EXPECT_EQ(s.last_step_missing_workers(0), 2u);
  EXPECT_EQ(s.workers(2).state(), v1::WORKER_STATE_LOST);
  // Killed mid-window among workers on the shared-memory fast path (its own
  // log lost its buffered lines with it).
  EXPECT_NE(ReadFile(dir + "/worker0.log").find("transport shared memory (fast path"), std::string::npos);
  // The last step averaged over the samples actually received: workers 0
  // and 1 of window 11 (test_client: s = 1 + (k + v + m) % 3 per micro-batch).
  uint64_t samples = 0;
  for (int k = 0; k < 2; ++k)
    for (int m = 0; m < 2; ++m) samples += 1 + (k + 11 + m) % 3;
  EXPECT_EQ(s.last_step_samples(), samples);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

using WorkerRestartTest = TransportTest;
TEST_P(WorkerRestartTest, WaitPolicyRestartedWorkerRejoinsBitIdentically) {
  const std::vector<float> reference = Reference(Job(), "wait");
  ASSERT_FALSE(reference.empty());
  const std::string dir = testing::MakeTempDir("wait");
  std::ofstream(dir + "/job.textproto") << Job();
  auto server =
      ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) workers.push_back(StartWorker(dir, address, k, /*step_delay_ms=*/100, GetParam()));
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (Status(address).step() < 4 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(10));
  workers[1]->Signal(SIGKILL);
  ASSERT_EQ(workers[1]->Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
  // The window waits; status names the missing worker.
  testing::StatusProbe probe(address);
  v1::Status waiting;
  ASSERT_TRUE(probe.WaitFor(
      [](const v1::Status& s) {
        const auto& m = s.window().missing_workers();
        return std::find(m.begin(), m.end(), 1u) != m.end() && s.window().contributions_received() == 2;
      },
      absl::Seconds(30), &waiting))
      << waiting.DebugString();
  EXPECT_LT(waiting.step(), static_cast<uint64_t>(kSteps));
  workers[1] = StartWorker(dir, address, 1, 100, GetParam());  // the same rank again
  for (int k = 0; k < kWorkers; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  EXPECT_TRUE(Same(ReadParams(dir + "/final.safetensors"), reference));
}
INSTANTIATE_TEST_SUITE_P(Transports, WorkerRestartTest, ::testing::Bool(), TransportName);

// What was accepted is immutable (design.md, semantics 8), on every
// transport. At several windows: one worker is stopped so the window stays
// open, another pushes, is SIGKILLed and restarted with the same rank; the
// restarted process computes a *different* gradient for that window (one
// micro-batch instead of two) in its fresh segment and pushes it again,
// which must be acknowledged as a duplicate without changing the bytes the
// server accepted. Then a kill at a random moment, restarted normally. The
// final parameters must equal the undisturbed run's, bit for bit.
using AcceptedContributionTest = TransportTest;
TEST_P(AcceptedContributionTest, RestartedWorkerCannotChangeWhatWasAccepted) {
  const std::vector<float> reference = Reference(Job(), "immutable");
  ASSERT_FALSE(reference.empty());
  const std::string dir = testing::MakeTempDir("immutable");
  std::ofstream(dir + "/job.textproto") << Job();
  auto server =
      ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string address = (*server)->address();
  testing::StatusProbe probe(address);
  auto start = [&](int k, int first_micro_batches) {
    return testing::StartTestClient(dir, address, k,
                                    {"--micro_batches=2", "--chunk_elements=300", "--step_delay_ms=100",
                                     absl::StrCat("--first_window_micro_batches=", first_micro_batches),
                                     absl::StrCat("--shared_memory=", GetParam())});
  };
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) workers.push_back(start(k, 0));
  for (const auto& [window, victim, holder] : {std::tuple{2, 0, 1}, {5, 2, 0}, {8, 1, 2}}) {
    SCOPED_TRACE(absl::StrCat("window ", window, ": worker ", victim, " restarted"));
    // Every worker sleeps 100 ms before each push: stopped right after the
    // window opens, the holder has not pushed to it.
    ASSERT_TRUE(probe.WaitFor([&](const v1::Status& s) { return s.step() >= static_cast<uint64_t>(window); }));
    workers[holder]->Signal(SIGSTOP);
    // The victim's contribution to the open window is accepted.
    v1::Status s;
    ASSERT_TRUE(probe.WaitFor(
        [&](const v1::Status& st) {
          return st.workers(victim).state() == v1::WORKER_STATE_PUSHED && st.workers(victim).last_window() == st.step();
        },
        absl::Seconds(30), &s))
        << s.DebugString();
    const uint64_t open = s.step();
    const uint64_t duplicates = s.workers(victim).duplicates();
    workers[victim]->Signal(SIGKILL);
    ASSERT_EQ(workers[victim]->Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
    workers[victim] = start(victim, /*first_micro_batches=*/1);
    ASSERT_TRUE(probe.WaitFor([&](const v1::Status& st) { return st.workers(victim).duplicates() > duplicates; },
                              absl::Seconds(30), &s))
        << "the restarted worker's push of window " << open << " was not acknowledged as a duplicate "
        << s.DebugString();
    EXPECT_EQ(s.step(), open) << "the window stayed open";
    workers[holder]->Signal(SIGCONT);
  }
  // A kill at a random moment, restarted normally.
  ASSERT_TRUE(probe.WaitFor([](const v1::Status& s) { return s.step() >= 10; }));
  workers[1]->Signal(SIGKILL);
  ASSERT_EQ(workers[1]->Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
  workers[1] = start(1, 0);
  for (int k = 0; k < kWorkers; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
  }
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  EXPECT_TRUE(Same(ReadParams(dir + "/final.safetensors"), reference));
}
INSTANTIATE_TEST_SUITE_P(Transports, AcceptedContributionTest, ::testing::Bool(), TransportName);

// A TCP proxy on loopback that cuts each connection after a seeded random
// number of bytes (either direction), for the first `cuts` connections.
class CuttingProxy {
 public:
  CuttingProxy(int upstream_port, uint32_t seed, int cuts) : upstream_(upstream_port), rng_(seed), cuts_left_(cuts) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::listen(listener_, 64);
    socklen_t len = sizeof(addr);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~CuttingProxy() {
    stop_ = true;
    ::shutdown(listener_, SHUT_RDWR);
    ::close(listener_);
    acceptor_.join();
    for (auto& t : pumps_) t.join();
  }
  int port() const { return port_; }
  int cuts_done() const { return cuts_done_; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) continue;
      const int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(upstream_);
      if (::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        ::close(client);
        ::close(server);
        continue;
      }
      int64_t budget = -1;  // unlimited
      {
        MutexLock lock(&mu_);
        if (cuts_left_ > 0) {
          --cuts_left_;
          // Somewhere inside a push or a pull of this ~8 KB model, or the
          // handshake.
          budget = std::uniform_int_distribution<int64_t>(200, 60000)(rng_);
        }
      }
      pumps_.emplace_back([this, client, server, budget] { Pump(client, server, budget); });
    }
  }

  void Pump(int a, int b, int64_t budget) {
    char buf[16384];
    int64_t moved = 0;
    while (!stop_) {
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (::poll(p, 2, 100) <= 0) continue;
      bool closed = false;
      for (int i = 0; i < 2 && !closed; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        size_t want = sizeof(buf);
        if (budget >= 0) want = std::min<int64_t>(want, std::max<int64_t>(1, budget - moved));
        const ssize_t n = ::read(p[i].fd, buf, want);
        if (n <= 0) {
          closed = true;
          break;
        }
        if (::write(i == 0 ? b : a, buf, n) != n) closed = true;
        moved += n;
        if (budget >= 0 && moved >= budget) {
          ++cuts_done_;
          closed = true;
        }
      }
      if (closed) break;
    }
    ::close(a);
    ::close(b);
  }

  const int upstream_;
  int listener_ = -1;
  int port_ = 0;
  std::thread acceptor_;
  std::vector<std::thread> pumps_;
  std::atomic<bool> stop_{false};
  std::atomic<int> cuts_done_{0};
  Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  int cuts_left_ ABSL_GUARDED_BY(mu_);
};

TEST(NetworkFaultTest, ConnectionsCutAtRandomPointsChangeNothing) {
  const std::vector<float> reference = Reference(Job(), "proxy");
  ASSERT_FALSE(reference.empty());
  const std::string dir = testing::MakeTempDir("proxy");
  std::ofstream(dir + "/job.textproto") << Job();
  auto server =
      ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors"});
  ASSERT_TRUE(server.ok()) << server.status();
  int cuts = 0;
  {
    CuttingProxy proxy((*server)->port(), /*seed=*/20261125, /*cuts=*/60);
    const std::string via = absl::StrCat("127.0.0.1:", proxy.port());
    std::vector<std::unique_ptr<Subprocess>> workers;
    // gRPC alone: the proxy cuts bytes of the data plane.
    for (int k = 0; k < kWorkers; ++k) workers.push_back(StartWorker(dir, via, k, 0, false));
    for (int k = 0; k < kWorkers; ++k) {
      ASSERT_EQ(workers[k]->Wait(absl::Seconds(120)), std::optional<int>(0))
          << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << (*server)->log();
    }
    cuts = proxy.cuts_done();
  }
  EXPECT_GE(cuts, 5) << "the proxy cut too few connections to mean anything";
  const v1::Status s = Status((*server)->address());
  // No contribution counted twice: exactly one accepted per worker and window.
  EXPECT_EQ(s.contributions_accepted(), static_cast<uint64_t>(kWorkers * kSteps));
  for (const auto& w : s.workers()) EXPECT_EQ(w.contributions(), static_cast<uint64_t>(kSteps));
  std::printf("connections cut: %d; duplicate pushes acknowledged: %lu\n", cuts, s.contributions_duplicate());
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  EXPECT_TRUE(Same(ReadParams(dir + "/final.safetensors"), reference));
}

// Runs a short job with checkpoints, then damages the newest checkpoint.
class CorruptCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("corrupt");
    std::ofstream(dir_ + "/job.textproto") << Job();
    auto server = ServerProcess::Start(
        dir_, {"--job=" + dir_ + "/job.textproto", "--checkpoint_dir=" + dir_ + "/ckpt", "--kill_at=after_publish:5"});
    ASSERT_TRUE(server.ok()) << server.status();
    std::vector<std::unique_ptr<Subprocess>> workers;
    for (int k = 0; k < kWorkers; ++k) workers.push_back(StartWorker(dir_, (*server)->address(), k));
    ASSERT_EQ((*server)->process().Wait(absl::Seconds(60)), std::optional<int>(128 + SIGKILL)) << (*server)->log();
    for (auto& w : workers) w->Signal(SIGKILL);
  }
  std::string Newest() { return dir_ + "/ckpt/ckpt-00000000000000000006/params.safetensors"; }
  void ExpectFallback(const std::string& why) {
    auto server = ServerProcess::Start(dir_, {"--checkpoint_dir=" + dir_ + "/ckpt"});
    ASSERT_TRUE(server.ok()) << server.status();
    const v1::Status s = Status((*server)->address());
    EXPECT_EQ(s.step(), 5u);
    EXPECT_NE(s.restored_from().find("ckpt-00000000000000000005"), std::string::npos) << s.restored_from();
    const std::string log = (*server)->log();
    EXPECT_NE(log.find("ckpt-00000000000000000006 is corrupt (" + why), std::string::npos) << log;
    EXPECT_NE(log.find("falling back to the previous one"), std::string::npos) << log;
    EXPECT_NE(log.find("from checkpoint " + dir_ + "/ckpt/ckpt-00000000000000000005 at step 5"), std::string::npos)
        << log;
    EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  }
  std::string dir_;
};

TEST_F(CorruptCheckpointTest, TruncatedNewestFallsBack) {
  const std::string bytes = ReadFile(Newest());
  ASSERT_GT(bytes.size(), 1000u);
  std::ofstream(Newest(), std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 2);
  ExpectFallback("file sizes or checksums differ from MANIFEST");
}

TEST_F(CorruptCheckpointTest, BitFlippedNewestFallsBack) {
  std::string bytes = ReadFile(Newest());
  ASSERT_GT(bytes.size(), 1000u);
  bytes[bytes.size() - 100] ^= 0x10;
  std::ofstream(Newest(), std::ios::binary | std::ios::trunc) << bytes;
  ExpectFallback("file sizes or checksums differ from MANIFEST");
}

// A client that opens a push and never finishes it holds nothing for long,
// and cannot open unbounded numbers of them.
TEST(HardeningTest, AbandonedPushStreamsAreCancelledAndBounded) {
  const std::string dir = testing::MakeTempDir("abandon");
  std::ofstream(dir + "/job.textproto") << Job();
  auto server = ServerProcess::Start(dir, {"--job=" + dir + "/job.textproto", "--push_timeout_s=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::DataPlane::NewStub(channel);
  for (uint32_t w = 0; w < 3; ++w) {
    grpc::ClientContext ctx;
    v1::JoinRequest r;
    r.set_worker(w);
    v1::JoinResponse resp;
    ASSERT_TRUE(stub->Join(&ctx, r, &resp).ok());
  }
  // 2 * 3 + 2 = 8 pushes may be in flight; open 8 and abandon them.
  struct Open {
    grpc::ClientContext ctx;
    v1::PushResponse resp;
    std::unique_ptr<grpc::ClientWriter<v1::PushRequest>> writer;
  };
  std::vector<std::unique_ptr<Open>> open;
  for (int i = 0; i < 8; ++i) {
    auto o = std::make_unique<Open>();
    o->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    o->writer = stub->Push(&o->ctx, &o->resp);
    v1::PushRequest req;
    req.mutable_header()->set_worker(i % 3);
    req.mutable_header()->set_window(0);
    req.mutable_header()->set_contribution_key(100 + i);
    req.mutable_header()->set_samples(1);
    req.mutable_header()->set_num_elements(64 * 33 + 33);
    ASSERT_TRUE(o->writer->Write(req));
    open.push_back(std::move(o));
  }
  v1::Status s;
  ASSERT_TRUE(testing::StatusProbe((*server)->address())
                  .WaitFor([](const v1::Status& st) { return st.pushes_in_flight() == 8; }, absl::Seconds(30), &s))
      << s.DebugString();
  // The 9th is refused: memory stays bounded.
  {
    grpc::ClientContext ctx;
    v1::PushResponse resp;
    auto writer = stub->Push(&ctx, &resp);
    v1::PushRequest req = {};
    req.mutable_header()->set_worker(0);
    req.mutable_header()->set_window(0);
    req.mutable_header()->set_samples(1);
    req.mutable_header()->set_num_elements(64 * 33 + 33);
    writer->Write(req);
    writer->WritesDone();
    const grpc::Status s = writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  }
  // After the push timeout the server has cancelled all of them.
  for (auto& o : open) {
    const grpc::Status s = o->writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
  }
  const v1::Status st = Status((*server)->address());
  EXPECT_EQ(st.window().contributions_received(), 0u);
  EXPECT_EQ(st.step(), 0u);
  // And the window still trains normally.
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) workers.push_back(StartWorker(dir, (*server)->address(), k));
  for (int k = 0; k < kWorkers; ++k) {
    EXPECT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
  }
  channel.reset();
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
}

// Nothing is published that is not durable (design.md, semantics 9). The
// checkpoint folder is a 1 MiB tmpfs, too small for one checkpoint: the
// first step is applied but not published; status, the log and /metrics say
// why; the job resumes by itself once the disk has room, with the bits of
// an undisturbed run. A restart that finds the folder's checkpoints gone
// refuses to start the job over.
TEST(CheckpointDiskTest, AFullDiskStopsPublishingUntilItHasRoom) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const std::string job = R"pb(
    job_id: "disk"
    model { tensors { name: "w" shape: [256, 1024] init { uniform { low: -0.5 high: 0.5 } } } }
    optimizer { kind: KIND_ADAM lr: 0.01 }
    window { num_workers: 2 micro_batches: 1 }
    total_steps: 5
    seed: 3
  )pb";
  auto run = [&](const std::string& dir, const std::vector<std::string>& flags) {
    std::ofstream(dir + "/job.textproto") << job;
    std::vector<std::string> all = {"--job=" + dir + "/job.textproto", "--output=" + dir + "/final.safetensors",
                                    "--shared_memory_dir="};
    all.insert(all.end(), flags.begin(), flags.end());
    return ServerProcess::Start(dir, all);
  };
  auto read_w = [](const std::string& path) {
    auto file = ReadSafetensorsFile(path);
    return file.ok() ? file->tensors.at("w").data : std::vector<float>();
  };
  // The reference, without checkpoints.
  const std::string ref_dir = testing::MakeTempDir("disk_ref");
  std::vector<float> reference;
  {
    auto server = run(ref_dir, {});
    ASSERT_TRUE(server.ok()) << server.status();
    auto w0 = testing::StartTestClient(ref_dir, (*server)->address(), 0, {"--micro_batches=1"});
    auto w1 = testing::StartTestClient(ref_dir, (*server)->address(), 1, {"--micro_batches=1"});
    ASSERT_EQ(w0->Wait(absl::Seconds(60)), std::optional<int>(0));
    ASSERT_EQ(w1->Wait(absl::Seconds(60)), std::optional<int>(0));
    EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
    reference = read_w(ref_dir + "/final.safetensors");
    ASSERT_FALSE(reference.empty());
  }
  const std::string dir = testing::MakeTempDir("disk");
  const std::string ckpt = dir + "/ckpt";
  std::filesystem::create_directories(ckpt);
  ASSERT_EQ(RunCommand({"/usr/bin/mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", ckpt}).exit_code, 0);
  struct Unmount {
    std::string path;
    ~Unmount() { RunCommand({"/usr/bin/umount", "-l", path}); }
  } unmount{ckpt};
  auto server = run(dir, {"--checkpoint_dir=" + ckpt, "--metrics_listen=127.0.0.1:0",
                          "--metrics_port_file=" + dir + "/metrics.port"});
  ASSERT_TRUE(server.ok()) << server.status();
  testing::StatusProbe probe((*server)->address());
  auto w0 = testing::StartTestClient(dir, (*server)->address(), 0, {"--micro_batches=1"});
  auto w1 = testing::StartTestClient(dir, (*server)->address(), 1, {"--micro_batches=1"});
  v1::Status s;
  ASSERT_TRUE(probe.WaitFor([](const v1::Status& st) { return !st.checkpoint().healthy(); }, absl::Seconds(30), &s))
      << s.DebugString();
  EXPECT_EQ(s.checkpoint().pending_version(), 1u);
  EXPECT_NE(s.checkpoint().error().find("No space left"), std::string::npos) << s.checkpoint().error();
  EXPECT_EQ(s.checkpoint().error().find(ckpt), std::string::npos) << "status shows no server paths";
  ASSERT_TRUE(probe.WaitFor([](const v1::Status& st) { return st.checkpoint().failures() >= 3; },
                            absl::Seconds(30), &s))
      << "the server retries " << s.DebugString();
  EXPECT_EQ(s.version(), 0u) << "a version was published without its checkpoint";
  EXPECT_NE((*server)->log().find("CHECKPOINT FAILED"), std::string::npos) << (*server)->log();
  const std::string metrics_port = ReadFile(dir + "/metrics.port");
  const auto metrics = RunCommand({"/usr/bin/python3", "-c",
                                   "import urllib.request,sys; print(urllib.request.urlopen("
                                   "'http://127.0.0.1:' + sys.argv[1] + '/metrics').read().decode())",
                                   std::string(absl::StripAsciiWhitespace(metrics_port))});
  EXPECT_NE(metrics.output.find("gradacc_checkpoint_healthy{job=\"disk\"} 0"), std::string::npos) << metrics.output;
  // Room again: the job resumes by itself and ends as the undisturbed run.
  ASSERT_EQ(RunCommand({"/usr/bin/mount", "-o", "remount,size=64m", ckpt}).exit_code, 0);
  ASSERT_EQ(w0->Wait(absl::Seconds(90)), std::optional<int>(0)) << ReadFile(dir + "/worker0.log");
  ASSERT_EQ(w1->Wait(absl::Seconds(90)), std::optional<int>(0)) << ReadFile(dir + "/worker1.log");
  s = probe.Get();
  EXPECT_TRUE(s.checkpoint().healthy());
  EXPECT_EQ(s.last_checkpoint_step(), 5u);
  EXPECT_EQ((*server)->Stop(), std::optional<int>(0));
  EXPECT_TRUE(Same(read_w(dir + "/final.safetensors"), reference));
  // The checkpoints are lost (the marker stays): a restart must not start
  // the job over while its workers may hold version 5.
  for (const auto& e : std::filesystem::directory_iterator(ckpt)) {
    if (e.path().filename().string().rfind("ckpt-", 0) == 0) std::filesystem::remove_all(e.path());
  }
  std::filesystem::remove(ckpt + "/ledger.jsonl");
  auto again = run(dir, {"--checkpoint_dir=" + ckpt});
  EXPECT_FALSE(again.ok());
  EXPECT_NE(ReadFile(dir + "/server.log").find("refusing to start the job over"), std::string::npos)
      << ReadFile(dir + "/server.log");
}

}  // namespace
}  // namespace gradacc
