// Durable state under file-system faults, through the fault-injecting Env
// (tests/fault_env.h) — no root, no tmpfs: a full disk, a failing fsync, a
// refused rename and a write torn by a kill leave the newest complete
// checkpoint loadable and nothing half-written in its place; a trainer
// whose checkpoints fail publishes nothing until a write succeeds, then goes
// on by itself; the step ledger loses no record.
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/files.h"
#include "gtest/gtest.h"
#include "server/checkpoint.h"
#include "server/step_ledger.h"
#include "server/trainer.h"
#include "tests/fault_env.h"
#include "tests/test_util.h"

namespace gradacc {
namespace {

std::string TempDir(const std::string& name) {
  const std::string dir =
      absl::StrCat(::testing::TempDir(), "/gradacc_env_fault_", name, "_", ::getpid(), "_", absl::ToUnixNanos(absl::Now()));
  std::filesystem::create_directories(dir);
  return dir;
}

class CheckpointFaultTest : public ::testing::Test {
 protected:
  CheckpointFaultTest() {
    model_.add_tensors()->set_name("w");
    model_.mutable_tensors(0)->add_shape(1000);
    layout_ = *ModelLayout::FromSpec(model_);
  }
  absl::Status Write(uint64_t version, Env* env) {
    v1::CheckpointState state;
    state.set_version(version);
    state.mutable_job()->set_job_id("faults");
    *state.mutable_job()->mutable_model() = model_;
    std::vector<float> params(1000, static_cast<float>(version));
    return WriteCheckpoint(dir_, layout_, state, params, {}, /*keep=*/3, nullptr, env);
  }
  // The newest loadable checkpoint's version, and that nothing else (no
  // temporary folder) is in the folder.
  uint64_t Newest() {
    std::vector<std::string> notes;
    auto c = LoadNewestCheckpoint(dir_, &notes);
    EXPECT_TRUE(c.ok()) << c.status() << " " << (notes.empty() ? "" : notes[0]);
    if (!c.ok()) return 0;
    EXPECT_EQ(c->params[0], static_cast<float>(c->state.version()));
    return c->state.version();
  }
  std::vector<std::string> Temporary() {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      if (e.path().filename().string().rfind(".tmp-", 0) == 0) out.push_back(e.path().filename());
    }
    return out;
  }

  const std::string dir_ = TempDir("ckpt");
  v1::ModelSpec model_;
  ModelLayout layout_;
};

TEST_F(CheckpointFaultTest, AFullDiskLeavesTheLastCheckpoint) {
  testing::FaultEnv env;
  ASSERT_TRUE(Write(1, &env).ok());
  env.SetSpace(2000);  // less than the parameters' 4000 bytes
  const absl::Status full = Write(2, &env);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_NE(full.message().find("No space left"), std::string::npos) << full;
  EXPECT_EQ(Newest(), 1u);
  EXPECT_TRUE(Temporary().empty()) << "a failed write removes its temporary folder";
  env.SetSpace(-1);
  ASSERT_TRUE(Write(2, &env).ok());
  EXPECT_EQ(Newest(), 2u);
}

TEST_F(CheckpointFaultTest, AFailingFsyncOrRenameLeavesTheLastCheckpoint) {
  testing::FaultEnv env;
  ASSERT_TRUE(Write(1, &env).ok());
  env.FailSync(true);
  const absl::Status sync = Write(2, &env);
  EXPECT_NE(sync.message().find("fsync"), std::string::npos) << sync;
  EXPECT_EQ(Newest(), 1u);
  env.FailSync(false);
  env.FailRename(true);
  const absl::Status rename = Write(2, &env);
  EXPECT_NE(rename.message().find("rename"), std::string::npos) << rename;
  EXPECT_EQ(Newest(), 1u);
  EXPECT_TRUE(Temporary().empty());
  EXPECT_EQ(env.failures(), 2);
  env.FailRename(false);
  ASSERT_TRUE(Write(2, &env).ok());
  EXPECT_EQ(Newest(), 2u);
}

TEST_F(CheckpointFaultTest, AWriteTornByAKillIsCleanedUpAndTheLastCheckpointLoads) {
  testing::FaultEnv env;
  ASSERT_TRUE(Write(1, &env).ok());
  for (const char* file : {"params.safetensors", "state.binpb", "MANIFEST"}) {
    SCOPED_TRACE(file);
    testing::FaultEnv dying;
    dying.TearNextWrite(file);
    EXPECT_FALSE(Write(2, &dying).ok());
    EXPECT_TRUE(dying.dead());
    // The killed writer cleaned nothing up: its half-written folder is there.
    ASSERT_EQ(Temporary().size(), 1u);
    // The next server: the newest complete checkpoint loads, and the
    // leftover goes before its first write.
    EXPECT_EQ(Newest(), 1u);
    const std::vector<std::string> notes = RemoveTemporaryCheckpoints(dir_);
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_NE(notes[0].find("did not finish"), std::string::npos) << notes[0];
    EXPECT_TRUE(Temporary().empty());
  }
}

// The step ledger on a full disk: the line that did not fit is cut short,
// nothing is dropped — the records stay queued and are written, each once
// and each on a line of its own, when the disk has room again.
TEST(StepLedgerFaultTest, AFullDiskCutsALineAndLosesNoRecord) {
  const std::string path = TempDir("ledger") + "/ledger.jsonl";
  testing::FaultEnv env;
  {
    StepLedger ledger(path, &env);
    v1::StepRecord r;
    r.set_step(1);
    ledger.Append(r);
    ledger.Flush();
    env.SetSpace(10);  // a part of the next line fits
    for (uint64_t step = 2; step <= 4; ++step) {
      r.set_step(step);
      ledger.Append(r);
    }
    absl::SleepFor(absl::Milliseconds(100));
    EXPECT_EQ(ledger.Unlogged().size(), 3u) << "the records not in the file are kept (and carried by checkpoints)";
    env.SetSpace(-1);
    ledger.Flush();  // the writer retries within its backoff (0.5 s first)
    EXPECT_TRUE(ledger.Unlogged().empty());
  }
  auto text = ReadFileToString(path);
  ASSERT_TRUE(text.ok());
  EXPECT_GE(env.failures(), 1);
  for (int step = 1; step <= 4; ++step) {
    const std::string line = absl::StrCat("{\"step\":\"", step, "\"");
    size_t whole = 0;
    for (size_t at = text->find(line); at != std::string::npos; at = text->find(line, at + 1)) {
      if (at == 0 || (*text)[at - 1] == '\n') ++whole;
    }
    EXPECT_EQ(whole, 1u) << "step " << step << " in\n" << *text;
  }
}

v1::JobSpec Job() {
  v1::JobSpec spec;
  spec.set_job_id("faults");
  auto* w = spec.mutable_model()->add_tensors();
  w->set_name("w");
  w->add_shape(300);
  spec.mutable_optimizer()->set_kind(v1::OptimizerSpec::KIND_ADAM);
  spec.mutable_optimizer()->set_lr(0.01);
  spec.mutable_window()->set_num_workers(1);
  spec.set_total_steps(5);
  return spec;
}

testing::Contribution Gradient(uint64_t window) {
  testing::Contribution c;
  c.worker = 0;
  c.window = window;
  c.key = window;
  c.samples = 4;
  c.loss_sum = 2;
  c.grad.assign(300, 0.01f * static_cast<float>(window + 1));
  return c;
}

bool VersionWithin(Trainer& trainer, uint64_t version, absl::Duration bound) {
  const absl::Time deadline = absl::Now() + bound;
  while (trainer.version() < version) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

// What CheckpointDiskTest (fault tier, root, a 1 MiB tmpfs) shows end to end,
// here in-process: a version whose checkpoint cannot be written is not
// published — the checkpoint health says why and which version waits — and
// the trainer publishes it by itself once the disk has room; the ledger's
// records written meanwhile are kept and appended then; the run ends with
// the parameters of an undisturbed one.
TEST(TrainerDiskFaultTest, AFullDiskStopsPublishingUntilItHasRoom) {
  auto run = [](bool disturbed) {
    const std::string dir = TempDir(disturbed ? "full" : "undisturbed");
    testing::FaultEnv env;
    TrainerOptions options;
    options.checkpoint_dir = dir + "/ckpt";
    options.ledger_path = dir + "/ledger.jsonl";
    options.checkpoint_retry = absl::Milliseconds(10);
    options.env = &env;
    auto created = Trainer::Create(Job(), options);
    EXPECT_TRUE(created.ok()) << created.status();
    std::unique_ptr<Trainer> trainer = std::move(*created);
    testing::JoinAll(*trainer);
    EXPECT_TRUE(testing::Push(*trainer, Gradient(0)).ok());
    EXPECT_TRUE(VersionWithin(*trainer, 1, absl::Seconds(10)));
    if (disturbed) env.SetSpace(1000);
    // The closing push is answered once its version is published: it waits
    // in a thread of its own while the disk is full.
    std::thread pusher([&] { EXPECT_TRUE(testing::Push(*trainer, Gradient(1)).ok()); });
    if (disturbed) {
      EXPECT_FALSE(VersionWithin(*trainer, 2, absl::Milliseconds(300))) << "published without a checkpoint";
      const v1::CheckpointHealth h = trainer->GetStatus().checkpoint();
      EXPECT_FALSE(h.healthy());
      EXPECT_EQ(h.pending_version(), 2u);
      EXPECT_NE(h.error().find("No space left"), std::string::npos) << h.error();
      EXPECT_GT(env.failures(), 1) << "the trainer retries";
      env.SetSpace(-1);
    }
    EXPECT_TRUE(VersionWithin(*trainer, 2, absl::Seconds(10))) << "did not resume when the disk had room";
    pusher.join();
    EXPECT_TRUE(trainer->GetStatus().checkpoint().healthy());
    for (uint64_t w = 2; w < 5; ++w) {
      EXPECT_TRUE(testing::Push(*trainer, Gradient(w)).ok());
      EXPECT_TRUE(VersionWithin(*trainer, w + 1, absl::Seconds(10)));
    }
    std::vector<float> params = trainer->Parameters();
    trainer.reset();  // flushes the ledger
    // Every step's record is in the ledger file once.
    auto ledger = ReadFileToString(dir + "/ledger.jsonl");
    EXPECT_TRUE(ledger.ok());
    for (int step = 1; step <= 5; ++step) {
      const std::string key = absl::StrCat("{\"step\":\"", step, "\"");
      size_t count = 0;
      for (size_t at = ledger->find(key); at != std::string::npos; at = ledger->find(key, at + 1)) ++count;
      EXPECT_EQ(count, 1u) << "step " << step << " in\n" << *ledger;
    }
    return params;
  };
  const std::vector<float> undisturbed = run(false);
  EXPECT_TRUE(testing::BitIdentical(run(true), undisturbed));
}

}  // namespace
}  // namespace gradacc
