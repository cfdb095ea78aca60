// Unit tests of the checkpoint format (server/checkpoint.h): what is written
// reads back bit for bit (parameters, optimizer state, state), only `keep`
// are kept, a corrupt newest one is skipped with a note, an exact version
// that is gone or corrupt says so, and a dead server's temporary folder is
// removed (a live process's is kept).
#include "server/checkpoint.h"

#include <fstream>
#include <string>
#include <vector>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/server/part_test_util.h"

namespace gradacc {
namespace {

using part_test::TempDir;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_.set_job_id("ckpt");
    auto* t = spec_.mutable_model()->add_tensors();
    t->set_name("w");
    t->add_shape(2);
    t->add_shape(3);
    auto layout = ModelLayout::FromSpec(spec_.model());
    ASSERT_TRUE(layout.ok()) << layout.status();
    layout_ = *std::move(layout);
    dir_ = TempDir("checkpoint");
  }
  absl::Status Write(uint64_t version, int keep) {
    v1::CheckpointState state;
    *state.mutable_job() = spec_;
    state.set_version(version);
    state.set_last_loss(0.5 * static_cast<double>(version));
    std::vector<float> params(6);
    FloatBuffer moment(6);
    for (int i = 0; i < 6; ++i) {
      params[i] = static_cast<float>(version) + 0.25f * static_cast<float>(i);
      moment.data()[i] = -params[i];
    }
    return WriteCheckpoint(dir_, layout_, state, params, {{"exp_avg", &moment}}, keep);
  }

  v1::JobSpec spec_;
  ModelLayout layout_;
  std::string dir_;
};

TEST_F(CheckpointTest, WrittenReadsBackAndOnlyKeepAreKept) {
  EXPECT_TRUE(absl::IsNotFound(LoadNewestCheckpoint(dir_, nullptr).status()));
  for (uint64_t v = 1; v <= 5; ++v) ASSERT_TRUE(Write(v, /*keep=*/3).ok());
  const std::vector<std::string> kept = ListCheckpoints(dir_);
  ASSERT_EQ(kept.size(), 3u);
  EXPECT_EQ(kept[0], "ckpt-00000000000000000005");
  EXPECT_EQ(kept[2], "ckpt-00000000000000000003");
  std::vector<std::string> notes;
  auto newest = LoadNewestCheckpoint(dir_, &notes);
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_TRUE(notes.empty());
  EXPECT_EQ(newest->state.version(), 5u);
  EXPECT_EQ(newest->state.last_loss(), 2.5);
  ASSERT_EQ(newest->params.size(), 6u);
  EXPECT_EQ(newest->params.data()[5], 6.25f);
  ASSERT_EQ(newest->optimizer.size(), 1u);
  EXPECT_EQ(newest->optimizer[0].first, "exp_avg");
  EXPECT_EQ(newest->optimizer[0].second.data()[5], -6.25f);
  EXPECT_TRUE(absl::IsNotFound(LoadCheckpointOfVersion(dir_, 2).status())) << "not kept";
  EXPECT_EQ(LoadCheckpointOfVersion(dir_, 4)->state.version(), 4u);
}

TEST_F(CheckpointTest, ACorruptNewestIsSkippedWithANote) {
  for (uint64_t v = 1; v <= 2; ++v) ASSERT_TRUE(Write(v, 3).ok());
  {
    // One flipped bit in the parameters of version 2.
    const std::string path = dir_ + "/ckpt-00000000000000000002/params.safetensors";
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-1, std::ios::end);
    char c;
    f.get(c);
    f.seekp(-1, std::ios::end);
    f.put(static_cast<char>(c ^ 1));
  }
  std::vector<std::string> notes;
  auto newest = LoadNewestCheckpoint(dir_, &notes);
  ASSERT_TRUE(newest.ok()) << newest.status();
  EXPECT_EQ(newest->state.version(), 1u);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("ckpt-00000000000000000002"), std::string::npos) << notes[0];
  EXPECT_TRUE(absl::IsDataLoss(LoadCheckpointOfVersion(dir_, 2).status()));
}

TEST_F(CheckpointTest, TemporaryFoldersOfDeadServersAreRemoved) {
  // pid 1 is alive (and not us); a pid far beyond pid_max is not.
  const std::string alive = dir_ + "/.tmp-ckpt-00000000000000000007-1";
  const std::string dead = dir_ + "/.tmp-ckpt-00000000000000000007-2147483646";
  const std::string other = dir_ + "/.tmp-something-else";
  for (const std::string& d : {alive, dead, other}) std::filesystem::create_directories(d);
  const std::vector<std::string> lines = RemoveTemporaryCheckpoints(dir_);
  EXPECT_EQ(lines.size(), 2u);
  EXPECT_TRUE(std::filesystem::exists(alive));
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(other)) << "only gradacc's temporary folders";
}

}  // namespace
}  // namespace gradacc
