// What a killed or restarted server leaves behind, against the real
// gradacc-server and test workers: no temporary checkpoint folder outlives a
// restart, the ledger has every durable step after a kill between the
// checkpoint and the ledger, every resume is counted and the job's counters
// continue across restarts, and shared-memory workers re-attaching after a
// normal restart are not counted as rejected. Ports chosen by the OS; every
// wait bounded.
#include <dirent.h>
#include <signal.h>

#include <fstream>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/status_probe.h"
#include "tests/subprocess.h"

namespace gradacc {
namespace {

using testing::ReadFile;
using testing::ServerProcess;
using testing::StatusProbe;
using testing::Subprocess;

constexpr int kWorkers = 3;
constexpr uint64_t kSteps = 12;

std::string Job(uint64_t steps = kSteps) {
  return absl::StrCat(R"pb(
    job_id: "restart"
    model {
      tensors { name: "w" shape: [32, 9] init { uniform { low: -0.5 high: 0.5 } } }
      tensors { name: "b" shape: [9] }
    }
    optimizer { kind: KIND_ADAM lr: 0.01 }
    window { num_workers: 3 micro_batches: 2 }
    total_steps: )pb",
                      steps, R"pb(
    seed: 5
  )pb");
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  ::closedir(d);
  return names;
}

std::vector<std::string> TemporaryCheckpoints(const std::string& dir) {
  std::vector<std::string> out;
  for (const std::string& n : Entries(dir)) {
    if (absl::StartsWith(n, ".tmp-ckpt-")) out.push_back(n);
  }
  return out;
}

// A job in `dir` whose server is killed at each of `kills` in turn
// (restarted on the same port after each), with workers that keep going.
class KilledJob {
 public:
  KilledJob(const std::string& name, std::vector<std::string> extra_server_flags = {},
            std::vector<std::string> extra_worker_flags = {}, uint64_t steps = kSteps)
      : dir_(testing::MakeTempDir(name)), extra_(std::move(extra_server_flags)),
        worker_flags_(std::move(extra_worker_flags)) {
    std::ofstream(dir_ + "/job.textproto") << Job(steps);
  }
  std::string dir() const { return dir_; }
  std::string ckpt() const { return dir_ + "/ckpt"; }
  ServerProcess& server() { return *server_; }

  // Starts the server (on the port it had, after the first start).
  void StartServer(const std::string& kill_at) {
    std::vector<std::string> flags = {"--job=" + dir_ + "/job.textproto", "--checkpoint_dir=" + ckpt(),
                                      "--output=" + dir_ + "/final.safetensors", "--worker_timeout_s=30"};
    flags.insert(flags.end(), extra_.begin(), extra_.end());
    if (!kill_at.empty()) flags.push_back("--kill_at=" + kill_at);
    if (server_ != nullptr) logs_ += server_->log();
    auto s = ServerProcess::Start(dir_, flags, port_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    port_ = server_->port();
  }
  void StartWorkers() {
    for (int k = 0; k < kWorkers; ++k) {
      std::vector<std::string> flags = {"--micro_batches=2", "--chunk_elements=100"};
      flags.insert(flags.end(), worker_flags_.begin(), worker_flags_.end());
      workers_.push_back(testing::StartTestClient(dir_, server_->address(), k, flags));
    }
  }
  // Waits for the SIGKILL of a failpoint.
  void ExpectKilled() {
    auto code = server_->process().Wait(absl::Seconds(60));
    ASSERT_EQ(code, std::optional<int>(128 + SIGKILL)) << server_->log();
  }
  void FinishWorkers() {
    for (int k = 0; k < kWorkers; ++k) {
      ASSERT_EQ(workers_[k]->Wait(absl::Seconds(90)), std::optional<int>(0))
          << ReadFile(absl::StrCat(dir_, "/worker", k, ".log")) << server_->log();
    }
  }
  std::string logs() const { return logs_ + server_->log(); }

 private:
  std::string dir_;
  std::vector<std::string> extra_;
  std::vector<std::string> worker_flags_;
  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
  std::string logs_;
  std::vector<std::unique_ptr<Subprocess>> workers_;
};

TEST(RestartTest, KilledMidCheckpointLeavesNoTemporaryFolderAfterTheRestart) {
  KilledJob job("tmp_ckpt");
  ASSERT_NO_FATAL_FAILURE(job.StartServer("mid_checkpoint:4"));
  job.StartWorkers();
  ASSERT_NO_FATAL_FAILURE(job.ExpectKilled());
  const std::vector<std::string> left = TemporaryCheckpoints(job.ckpt());
  ASSERT_EQ(left.size(), 1u) << "the failpoint kills while the temporary folder is complete";
  EXPECT_TRUE(absl::StartsWith(left[0], ".tmp-ckpt-00000000000000000005-")) << left[0];
  // Not ours: names that do not match the pattern stay.
  for (const char* other : {".tmp-ckpt-notours", ".tmp-mine", "notes"}) {
    ASSERT_EQ(::mkdir((job.ckpt() + "/" + other).c_str(), 0700), 0) << other;
  }
  ASSERT_NO_FATAL_FAILURE(job.StartServer(""));
  EXPECT_TRUE(TemporaryCheckpoints(job.ckpt()) == std::vector<std::string>{".tmp-ckpt-notours"})
      << "the killed server's temporary folder is removed when the next one starts";
  ASSERT_NO_FATAL_FAILURE(job.FinishWorkers());
  EXPECT_NE(job.logs().find("a checkpoint that a killed server did not finish"), std::string::npos) << job.logs();
  const std::vector<std::string> entries = Entries(job.ckpt());
  const std::set<std::string> names(entries.begin(), entries.end());
  EXPECT_EQ(names.count(".tmp-mine"), 1u);
  EXPECT_EQ(names.count("notes"), 1u);
  EXPECT_EQ(StatusProbe(job.server().address()).Get().step(), kSteps);
  EXPECT_EQ(job.server().Stop(), std::optional<int>(0));
}

// The steps of ledger.jsonl (the later line of a step wins) and which of
// them were recovered from a checkpoint.
std::map<uint64_t, v1::StepRecord> LedgerSteps(const std::string& path) {
  std::map<uint64_t, v1::StepRecord> steps;
  for (absl::string_view line : absl::StrSplit(ReadFile(path), '\n', absl::SkipEmpty())) {
    v1::StepRecord r;
    EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(std::string(line), &r).ok()) << line;
    steps[r.step()] = r;
  }
  return steps;
}

TEST(RestartTest, KillBetweenCheckpointAndLedgerLosesNoStep) {
  KilledJob job("ledger_gap");
  // Window 5's step (version 6) is durable; the server dies before the
  // ledger has it and before anyone sees version 6.
  ASSERT_NO_FATAL_FAILURE(job.StartServer("after_checkpoint:5"));
  job.StartWorkers();
  ASSERT_NO_FATAL_FAILURE(job.ExpectKilled());
  ASSERT_NO_FATAL_FAILURE(job.StartServer(""));
  ASSERT_NO_FATAL_FAILURE(job.FinishWorkers());
  EXPECT_EQ(job.server().Stop(), std::optional<int>(0));
  const auto steps = LedgerSteps(job.ckpt() + "/ledger.jsonl");
  for (uint64_t step = 1; step <= kSteps; ++step) {
    ASSERT_EQ(steps.count(step), 1u) << "step " << step << " is missing from the ledger\n"
                                     << ReadFile(job.ckpt() + "/ledger.jsonl");
    EXPECT_EQ(steps.at(step).contributions_size(), kWorkers) << "step " << step;
  }
  EXPECT_TRUE(steps.at(6).recovered()) << steps.at(6).DebugString();
  EXPECT_EQ(steps.at(6).window(), 5u);
  EXPECT_FALSE(steps.at(7).recovered());
  EXPECT_NE(job.logs().find("step 6 was durable but missing from the ledger"), std::string::npos) << job.logs();
}

TEST(RestartTest, EveryResumeIsCountedAndTheJobCountersContinue) {
  KilledJob job("counters");
  // Killed after version 4 is durable; then twice while window 4 closes,
  // before its checkpoint (each of those resumes ends before writing one).
  ASSERT_NO_FATAL_FAILURE(job.StartServer("after_publish:3"));
  job.StartWorkers();
  for (const char* kill : {"before_checkpoint:4", "before_checkpoint:4"}) {
    ASSERT_NO_FATAL_FAILURE(job.ExpectKilled());
    ASSERT_NO_FATAL_FAILURE(job.StartServer(kill));
  }
  ASSERT_NO_FATAL_FAILURE(job.ExpectKilled());
  ASSERT_NO_FATAL_FAILURE(job.StartServer(""));
  ASSERT_NO_FATAL_FAILURE(job.FinishWorkers());
  const v1::Status s = StatusProbe(job.server().address()).Get();
  EXPECT_EQ(s.step(), kSteps);
  EXPECT_EQ(s.server_restarts(), 3u);
  // Every window's contributions counted once, across the restarts.
  EXPECT_EQ(s.contributions_accepted(), kSteps * kWorkers) << s.DebugString();
  uint64_t per_worker = 0, duplicates = 0;
  for (const v1::WorkerStatus& w : s.workers()) {
    per_worker += w.contributions();
    duplicates += w.duplicates();
  }
  EXPECT_EQ(per_worker, kSteps * kWorkers);
  EXPECT_EQ(s.contributions_duplicate(), duplicates);
  EXPECT_EQ(s.contributions_rejected(), 0u);
  EXPECT_EQ(job.server().Stop(), std::optional<int>(0));
  // And across a normal restart.
  ASSERT_NO_FATAL_FAILURE(job.StartServer(""));
  const v1::Status again = StatusProbe(job.server().address()).Get();
  EXPECT_EQ(again.server_restarts(), 4u);
  EXPECT_EQ(again.contributions_accepted(), kSteps * kWorkers);
  EXPECT_EQ(again.contributions_duplicate(), s.contributions_duplicate());
  EXPECT_EQ(job.server().Stop(), std::optional<int>(0));
}

TEST(RestartTest, SharedMemoryReattachAfterANormalRestartIsNotARejection) {
  // Slow workers: when the server restarts they are computing into the
  // segments of the old server, and each pushes from one after it.
  KilledJob job("reattach", {}, {"--step_delay_ms=1200", "--shared_memory=true"}, 5);
  ASSERT_NO_FATAL_FAILURE(job.StartServer(""));
  job.StartWorkers();
  StatusProbe probe(job.server().address());
  v1::Status s;
  ASSERT_TRUE(probe.WaitFor(
      [](const v1::Status& st) {
        if (st.step() < 2) return false;
        for (const v1::WorkerStatus& w : st.workers()) {
          if (w.transport() != v1::TRANSPORT_SHARED_MEMORY) return false;
        }
        return true;
      },
      absl::Seconds(60), &s))
      << s.DebugString();
  const uint64_t before = s.step();
  EXPECT_EQ(job.server().Stop(), std::optional<int>(0));
  ASSERT_NO_FATAL_FAILURE(job.StartServer(""));
  ASSERT_NO_FATAL_FAILURE(job.FinishWorkers());
  s = StatusProbe(job.server().address()).Get();
  EXPECT_EQ(s.step(), 5u);
  EXPECT_GE(s.server_restarts(), 1u);
  EXPECT_EQ(s.contributions_rejected(), 0u) << s.DebugString();
  for (const v1::WorkerStatus& w : s.workers()) {
    EXPECT_EQ(w.rejected(), 0u) << "worker " << w.worker();
    EXPECT_EQ(w.transport(), v1::TRANSPORT_SHARED_MEMORY) << "worker " << w.worker();
  }
  EXPECT_LT(before, 5u);
  EXPECT_EQ(job.server().Stop(), std::optional<int>(0));
}

}  // namespace
}  // namespace gradacc
