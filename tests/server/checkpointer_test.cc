// Unit tests of Checkpointer: failures are sticky until a write succeeds; every resume is counted
// in its folder.
#include "server/checkpointer.h"

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "common/errors.h"
#include "common/files.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "tests/server/part_test_util.h"

namespace gradacc {
namespace {

using part_test::Event;
using part_test::TempDir;

TEST(CheckpointerTest, FailuresAreStickyUntilAWriteSucceeds) {
  const std::string dir = TempDir("ckpt");
  v1::ModelSpec model;
  model.add_tensors()->set_name("w");
  model.mutable_tensors(0)->add_shape(4);
  const ModelLayout layout = *ModelLayout::FromSpec(model);
  Checkpointer c({dir + "/sub", 1, 2}, &layout);
  EXPECT_TRUE(c.Due(5, false));
  v1::CheckpointState state;
  state.set_version(5);
  state.mutable_job()->set_job_id("j");
  const std::vector<float> params = {1, 2, 3, 4};
  // The folder's parent is a file: every write fails.
  std::ofstream(dir + "/sub") << "not a folder";
  EXPECT_FALSE(c.Write(state, params, {}).ok());
  EXPECT_FALSE(c.healthy());
  // The failure and the version it holds back are one change: a status read
  // between them said "unhealthy, pending 0" (what CheckpointDiskTest can
  // catch under load).
  const v1::CheckpointHealth h = c.health();
  EXPECT_FALSE(h.healthy());
  EXPECT_EQ(h.failures(), 1u);
  EXPECT_EQ(h.pending_version(), 5u);
  EXPECT_FALSE(h.error().empty());
  std::filesystem::remove(dir + "/sub");
  ASSERT_TRUE(c.Write(state, params, {}).ok());
  EXPECT_TRUE(c.healthy());
  EXPECT_EQ(c.health().pending_version(), 0u);
  EXPECT_EQ(c.last_version(), 5u);
  // The folder held a checkpoint: starting afresh there is refused.
  for (const auto& e : std::filesystem::directory_iterator(dir + "/sub")) {
    if (e.path().filename() != "JOB") std::filesystem::remove_all(e.path());
  }
  const absl::Status fresh = Checkpointer::CheckFreshStart(dir + "/sub", "");
  EXPECT_EQ(fresh.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(fresh.message().find("refusing to start"), std::string::npos) << fresh;
  EXPECT_TRUE(Checkpointer::CheckFreshStart(TempDir("empty"), "").ok());
  const std::string ledger = dir + "/ledger.jsonl";
  std::ofstream(ledger) << "{\"step\":1}\n";
  EXPECT_EQ(Checkpointer::CheckFreshStart("", ledger).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(CheckpointerTest, EveryResumeIsCountedInItsFolder) {
  const std::string dir = TempDir("restarts");
  EXPECT_EQ(Checkpointer::CountResume(dir, 0), 1u);
  EXPECT_EQ(Checkpointer::CountResume(dir, 0), 2u) << "a resume from the same checkpoint counts again";
  EXPECT_EQ(Checkpointer::CountResume(dir, 7), 8u) << "the checkpoint's count when it is larger";
  EXPECT_EQ(ReadFileToString(dir + "/RESTARTS").value(), "8\n");
}

}  // namespace
}  // namespace gradacc
