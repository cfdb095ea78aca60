// Sharded servers that fail: shards SIGKILLed at seeded random moments and
// restarted with the same flags give the parameters of the undisturbed run,
// bit for bit (also when one process serves several shards and a kill
// takes them all); a shard that does not come back stops every worker with an
// error naming it, and the other shards' status names it. Every wait is
// bounded.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "tests/status_probe.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::FreePort;
using testing::ReadFile;
using testing::ServerProcess;
using testing::Subprocess;

constexpr int kWorkers = 3;
constexpr int kSteps = 16;

// Adam (optimizer state must survive) and global-norm clipping (the shards
// exchange norm parts every window, so a restarted shard must find its
// peers' parts again).
std::string Job(bool clipping = true) {
  return absl::StrCat(R"pb(
    job_id: "sharded_fault"
    model {
      tensors { name: "w" shape: [150, 33] init { uniform { low: -0.5 high: 0.5 } } }
      tensors { name: "b" shape: [33] init { constant: 0.1 } }
    }
    optimizer { kind: KIND_ADAM lr: 0.01 }
    window { num_workers: 3 micro_batches: 2 }
    )pb",
                      clipping ? "clipping { max_norm: 1.0 }" : "", R"pb(
    total_steps: )pb",
                      kSteps, R"pb(
    seed: 13
  )pb");
}

// The job's shards, served by processes of `per_process` shards each:
// process p of P serves shards p, p + P, p + 2P, ... (interleaved, as
// tests/bench/multihost.sh lays shards out over server hosts), each process
// in its own folder with its checkpoints (one subfolder per shard when it
// serves several).
class Shards {
 public:
  Shards(std::string dir, int n, std::vector<std::string> extra, int per_process = 1)
      : dir_(std::move(dir)), extra_(std::move(extra)), n_(n), per_process_(per_process) {
    for (int p = 0; p < servers(); ++p) ports_.push_back(FreePort());
    std::vector<std::string> addresses;
    for (int i = 0; i < n; ++i) addresses.push_back(address(i));
    peers_ = absl::StrJoin(addresses, ",");
    processes_.resize(servers());
  }
  const std::string& peers() const { return peers_; }
  int size() const { return n_; }
  // Server processes.
  int servers() const { return n_ / per_process_; }
  // Shard i's address (that of the process serving it).
  std::string address(int i) const { return absl::StrCat("127.0.0.1:", ports_[i % servers()]); }
  std::string folder(int p) const { return absl::StrCat(dir_, "/server", p); }
  ServerProcess& server(int p) { return *processes_[p]; }

  // Starts (or restarts, same flags and port) server process p.
  absl::Status Start(int p) {
    ::mkdir(folder(p).c_str(), 0700);
    std::vector<std::string> served;
    for (int i = p; i < n_; i += servers()) served.push_back(absl::StrCat(i));
    std::vector<std::string> flags = {"--job=" + dir_ + "/job.textproto",
                                      "--shard=" + absl::StrJoin(served, ","),
                                      absl::StrCat("--num_shards=", size()),
                                      "--shard_peers=" + peers_,
                                      "--checkpoint_dir=" + folder(p) + "/ckpt",
                                      "--output=" + folder(p) + "/final.safetensors"};
    flags.insert(flags.end(), extra_.begin(), extra_.end());
    auto s = ServerProcess::Start(folder(p), flags, ports_[p]);
    if (!s.ok()) return s.status();
    processes_[p] = std::move(*s);
    return absl::OkStatus();
  }
  std::string Logs() {
    std::string out;
    for (int p = 0; p < servers(); ++p) {
      absl::StrAppend(&out, "--- server ", p, " ---\n", ReadFile(folder(p) + "/server.log"));
    }
    return out;
  }
  // Every shard's part of the final parameters, in flat order.
  std::vector<float> Params() {
    std::vector<float> all;
    for (int i = 0; i < size(); ++i) {
      const std::string file = folder(i % servers()) + "/final.safetensors" +
                               (per_process_ > 1 ? absl::StrCat(".shard-", i) : "");
      auto part = ReadSafetensorsFile(file);
      EXPECT_TRUE(part.ok()) << part.status();
      if (!part.ok()) return {};
      const auto& data = part->tensors.at("shard_params").data;
      all.insert(all.end(), data.begin(), data.end());
    }
    return all;
  }

 private:
  const std::string dir_;
  const std::vector<std::string> extra_;
  const int n_;
  const int per_process_;
  std::vector<int> ports_;  // per process
  std::string peers_;
  std::vector<std::unique_ptr<ServerProcess>> processes_;
};

struct ShardSetup {
  int shards;
  std::string wire;     // the workers' wire format
  int per_process = 1;  // shards each server process serves
};
void PrintTo(const ShardSetup& setup, std::ostream* os) {
  *os << setup.shards << " shards, " << setup.wire << ", " << setup.per_process << " per process";
}
std::string SetupName(const ::testing::TestParamInfo<ShardSetup>& info) {
  return absl::StrCat(info.param.shards, "Shards_", info.param.wire,
                      info.param.per_process > 1 ? absl::StrCat("_", info.param.per_process, "PerProcess") : "");
}

std::vector<std::unique_ptr<Subprocess>> StartWorkers(const std::string& dir, const std::string& peers,
                                                      const std::string& wire, int step_delay_ms) {
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) {
    workers.push_back(testing::StartTestClient(
        dir, peers, k,
        {"--micro_batches=2", "--chunk_elements=400", "--wire_format=" + wire,
         absl::StrCat("--step_delay_ms=", step_delay_ms)}));
  }
  return workers;
}

// The undisturbed sharded run.
std::vector<float> Reference(const ShardSetup& setup, bool clipping = true) {
  const std::string dir = testing::MakeTempDir(absl::StrCat("shard_ref_", setup.shards, setup.wire));
  std::ofstream(dir + "/job.textproto") << Job(clipping);
  Shards shards(dir, setup.shards, {});
  for (int p = 0; p < shards.servers(); ++p) EXPECT_TRUE(shards.Start(p).ok());
  auto workers = StartWorkers(dir, shards.peers(), setup.wire, 0);
  for (int k = 0; k < kWorkers; ++k) {
    EXPECT_EQ(workers[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << shards.Logs();
  }
  for (int p = 0; p < shards.servers(); ++p) EXPECT_EQ(shards.server(p).Stop(), std::optional<int>(0));
  return shards.Params();
}

class ShardKillTest : public ::testing::TestWithParam<ShardSetup> {};

TEST_P(ShardKillTest, ThreeRandomKillsGiveBitIdenticalParameters) {
  const ShardSetup setup = GetParam();
  const std::vector<float> reference = Reference(setup);
  ASSERT_FALSE(reference.empty());

  const std::string dir = testing::MakeTempDir(absl::StrCat("shard_kill_", setup.shards, setup.wire));
  std::ofstream(dir + "/job.textproto") << Job();
  Shards shards(dir, setup.shards, {}, setup.per_process);
  for (int p = 0; p < shards.servers(); ++p) ASSERT_TRUE(shards.Start(p).ok());
  // Workers that take ~60 ms a window, so that kills land inside the job.
  auto workers = StartWorkers(dir, shards.peers(), setup.wire, 60);

  std::mt19937 rng(2026 + setup.shards);
  std::uniform_int_distribution<int> pick(0, shards.servers() - 1);  // a process (all its shards)
  std::uniform_int_distribution<int> delay_ms(100, 500);
  std::string killed;
  for (int kill = 0; kill < 3; ++kill) {
    const int victim = pick(rng);
    absl::SleepFor(absl::Milliseconds(delay_ms(rng)));
    const uint64_t step = testing::StatusProbe(shards.address(victim)).Get().step();
    shards.server(victim).process().Signal(SIGKILL);
    ASSERT_EQ(shards.server(victim).process().Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
    absl::StrAppend(&killed, " server ", victim, " at step ", step, ";");
    ASSERT_TRUE(shards.Start(victim).ok()) << shards.Logs();
  }
  SCOPED_TRACE("killed:" + killed);
  for (int k = 0; k < kWorkers; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(120)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << shards.Logs();
  }
  for (int p = 0; p < shards.servers(); ++p) {
    const v1::Status s = testing::StatusProbe(shards.address(p)).Get();
    EXPECT_EQ(s.step(), static_cast<uint64_t>(kSteps)) << "server " << p;
    EXPECT_EQ(shards.server(p).Stop(), std::optional<int>(0));
  }
  std::printf("killed:%s\n", killed.c_str());
  const std::vector<float> got = shards.Params();
  ASSERT_EQ(got.size(), reference.size());
  EXPECT_EQ(std::memcmp(got.data(), reference.data(), got.size() * 4), 0)
      << "parameters after three shard kills differ from the undisturbed run";
}
INSTANTIATE_TEST_SUITE_P(Shards, ShardKillTest,
                         ::testing::Values(ShardSetup{2, "f32"}, ShardSetup{3, "f32"}, ShardSetup{2, "bf16"},
                                           ShardSetup{3, "bf16"}, ShardSetup{4, "f32", 2}),
                         SetupName);

// A worker killed after pushing its part to shard 0 but not to shard 1:
// shard 0 closes the window and publishes the next version, shard 1 waits
// for the dead worker. Restarted, the worker finds the shards one version
// apart; it must compute the older window again (shard 0 still serves that
// version's parameters), push (a duplicate for shard 0) and carry on.
TEST(ShardWorkerKillTest, WorkerKilledBetweenShardPushesRejoins) {
  const ShardSetup setup{2, "f32"};
  const std::vector<float> reference = Reference(setup, /*clipping=*/false);
  ASSERT_FALSE(reference.empty());
  const std::string dir = testing::MakeTempDir("shard_worker_kill");
  std::ofstream(dir + "/job.textproto") << Job(/*clipping=*/false);
  Shards shards(dir, 2, {});
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(shards.Start(i).ok());
  auto workers = StartWorkers(dir, shards.peers(), setup.wire, 100);
  testing::StatusProbe probe0(shards.address(0));
  ASSERT_TRUE(probe0.WaitFor([](const v1::Status& s) { return s.step() >= 3; }, absl::Seconds(60)));
  // Shard 1 stops answering: every worker's push to shard 0 goes through,
  // the one to shard 1 hangs; shard 0 closes its window. (Unless a worker
  // was still pulling from shard 1 when it stopped: then let it go on and
  // try again.)
  v1::Status s0;
  uint64_t before = 0;
  bool apart = false;
  for (int attempt = 0; attempt < 5 && !apart; ++attempt) {
    shards.server(1).process().Signal(SIGSTOP);
    before = probe0.Get().step();
    apart = probe0.WaitFor([&](const v1::Status& s) { return s.step() > before; }, absl::Seconds(5), &s0);
    if (!apart) {
      shards.server(1).process().Signal(SIGCONT);
      absl::SleepFor(absl::Milliseconds(300));
    }
  }
  ASSERT_TRUE(apart) << s0.DebugString();
  std::printf("shard 0 at step %d (was %d) with shard 1 stopped\n", static_cast<int>(s0.step()),
              static_cast<int>(before));
  workers[2]->Signal(SIGKILL);
  ASSERT_EQ(workers[2]->Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
  shards.server(1).process().Signal(SIGCONT);
  workers[2] = testing::StartTestClient(dir, shards.peers(), 2,
                                        {"--micro_batches=2", "--chunk_elements=400", "--step_delay_ms=100"});
  for (int k = 0; k < kWorkers; ++k) {
    ASSERT_EQ(workers[k]->Wait(absl::Seconds(120)), std::optional<int>(0))
        << ReadFile(absl::StrCat(dir, "/worker", k, ".log")) << shards.Logs()
        << testing::StatusProbe(shards.address(0)).Get().DebugString()
        << testing::StatusProbe(shards.address(1)).Get().DebugString();
  }
  for (int i = 0; i < 2; ++i) EXPECT_EQ(shards.server(i).Stop(), std::optional<int>(0));
  const std::vector<float> got = shards.Params();
  ASSERT_EQ(got.size(), reference.size());
  EXPECT_EQ(std::memcmp(got.data(), reference.data(), got.size() * 4), 0);
}

// A shard that does not come back: within the window timeout every worker
// stops with an error naming it, the other shards' status names it, and
// every shard still answers and stops cleanly.
TEST(ShardAwayTest, ShardThatStaysAwayIsNamedEverywhere) {
  const std::string dir = testing::MakeTempDir("shard_away");
  std::ofstream(dir + "/job.textproto") << Job();
  Shards shards(dir, 3, {});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(shards.Start(i).ok());
  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int k = 0; k < kWorkers; ++k) {
    workers.push_back(testing::StartTestClient(
        dir, shards.peers(), k, {"--micro_batches=2", "--chunk_elements=400", "--step_delay_ms=50",
                                 "--window_timeout_s=8"}));
  }
  testing::StatusProbe probe0(shards.address(0));
  ASSERT_TRUE(probe0.WaitFor([](const v1::Status& s) { return s.step() >= 3; }, absl::Seconds(60)));
  shards.server(1).process().Signal(SIGKILL);
  ASSERT_EQ(shards.server(1).process().Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
  const absl::Time killed = absl::Now();
  for (int k = 0; k < kWorkers; ++k) {
    const std::optional<int> code = workers[k]->Wait(absl::Seconds(30));
    ASSERT_TRUE(code.has_value()) << "worker " << k << " still running 30 s after the shard died";
    EXPECT_EQ(*code, 1);
    const std::string log = ReadFile(absl::StrCat(dir, "/worker", k, ".log"));
    EXPECT_NE(log.find("shard 1 (" + shards.address(1) + ")"), std::string::npos) << log;
  }
  const absl::Duration stopped = absl::Now() - killed;
  std::printf("workers stopped %.1f s after the shard died\n", absl::ToDoubleSeconds(stopped));
  EXPECT_LT(stopped, absl::Seconds(8 + 5)) << "the window timeout is 8 s";
  for (int i : {0, 2}) {
    const v1::Status s = testing::StatusProbe(shards.address(i)).Get();
    ASSERT_EQ(s.shards_size(), 3) << s.DebugString();
    EXPECT_FALSE(s.shards(1).reachable()) << s.DebugString();
    EXPECT_TRUE(s.shards(2 - i).reachable()) << s.DebugString();
    EXPECT_NE(s.shards(1).error(), "") << s.DebugString();
    const auto status_text = testing::RunCommand({GRADACC_CLI_BIN, "status", "--server=" + shards.address(i)});
    EXPECT_NE(status_text.output.find("SHARD AWAY: shard 1 (" + shards.address(1) + ")"), std::string::npos)
        << status_text.output;
  }
  const std::string logs = shards.Logs();
  EXPECT_NE(logs.find("shard 1 (" + shards.address(1) + ") does not answer"), std::string::npos) << logs;
  for (int i : {0, 2}) EXPECT_EQ(shards.server(i).Stop(), std::optional<int>(0)) << shards.Logs();
}

// A process serving several shards watches its peers once for all of them
// (one monitor, one channel per peer address): when the other process dies,
// its log says so once, and the status names each of its shards.
TEST(ShardAwayTest, OneProcessWatchesItsPeersOnceForAllItsShards) {
  const std::string dir = testing::MakeTempDir("shard_away_shared");
  std::ofstream(dir + "/job.textproto") << Job();
  Shards shards(dir, 6, {}, /*per_process=*/3);  // process 0: shards 0, 2, 4; process 1: 1, 3, 5
  for (int p = 0; p < 2; ++p) ASSERT_TRUE(shards.Start(p).ok());
  testing::StatusProbe probe0(shards.address(0));
  ASSERT_TRUE(probe0.WaitFor([](const v1::Status& s) { return s.shards_size() == 6 && s.shards(1).reachable(); },
                             absl::Seconds(30)))
      << shards.Logs();
  shards.server(1).process().Signal(SIGKILL);
  ASSERT_EQ(shards.server(1).process().Wait(absl::Seconds(10)), std::optional<int>(128 + SIGKILL));
  ASSERT_TRUE(probe0.WaitFor(
      [](const v1::Status& s) {
        if (s.shards_size() != 6) return false;
        // Unreachable now, and away in the (shared) monitor's view.
        for (int i : {1, 3, 5}) {
          if (s.shards(i).reachable() || s.shards(i).away_since_unix_micros() == 0) return false;
        }
        return true;
      },
      absl::Seconds(30)))
      << probe0.Get().DebugString() << shards.Logs();
  const v1::Status s = probe0.Get();
  for (int i : {0, 2, 4}) EXPECT_TRUE(s.shards(i).reachable()) << s.DebugString();
  // Another second of monitoring: still one line.
  absl::SleepFor(absl::Milliseconds(1500));
  const std::string log = ReadFile(shards.folder(0) + "/server.log");
  const std::string line = "shards 1, 3, 5 (" + shards.address(1) + ") do not answer";
  size_t lines = 0;
  for (size_t at = log.find(line); at != std::string::npos; at = log.find(line, at + 1)) ++lines;
  EXPECT_EQ(lines, 1u) << log;
  EXPECT_EQ(shards.server(0).Stop(), std::optional<int>(0)) << shards.Logs();
}

}  // namespace
}  // namespace gradacc
