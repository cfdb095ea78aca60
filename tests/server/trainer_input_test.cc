// Unit tests of the Trainer (server/trainer.h): every bad push is refused
// with its reason and changes nothing accumulated.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include "common/kernels.h"
#include "common/shm.h"
#include "gtest/gtest.h"
#include "server/checkpoint.h"
#include "server/norm_exchange.h"
#include "server/trainer.h"
#include "tests/server/trainer_fixtures.h"
#include "tests/test_util.h"

// In the fixtures' namespace: SmallJob, MakeWindow, NewTrainer, Push.
namespace gradacc::trainer_fixtures {
namespace {

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    trainer_ = NewTrainer(SmallJob(2, 3));
    good_ = MakeWindow(0, 2, 37 * 11 + 11, 6);
    ASSERT_TRUE(Push(*trainer_, good_[0]).ok());
    before_ = trainer_->GetStatus();
    params_ = trainer_->Parameters();
  }
  v1::PushHeader Header() {
    v1::PushHeader h;
    h.set_worker(1);
    h.set_window(0);
    h.set_contribution_key(0);
    h.set_samples(4);
    h.set_num_elements(37 * 11 + 11);
    return h;
  }
  // The window is as it was, and completing it still gives the right answer.
  void ExpectUnchanged() {
    const v1::Status now = trainer_->GetStatus();
    EXPECT_EQ(now.window().contributions_received(), before_.window().contributions_received());
    EXPECT_EQ(now.window().samples_received(), before_.window().samples_received());
    EXPECT_EQ(now.step(), 0u);
    EXPECT_TRUE(testing::BitIdentical(trainer_->Parameters(), params_));
    auto reference = NewTrainer(SmallJob(2, 3));
    for (auto& c : good_) ASSERT_TRUE(Push(*reference, c).ok());
    ASSERT_TRUE(Push(*trainer_, good_[1]).ok());
    EXPECT_TRUE(testing::BitIdentical(trainer_->Parameters(), reference->Parameters()));
  }
  absl::Status Chunked(v1::PushHeader h, std::function<absl::Status(PushSession&)> feed) {
    auto s = trainer_->BeginPush(h);
    if (!s.ok()) return s.status();
    absl::Status st = feed(**s);
    if (!st.ok()) return st;
    return trainer_->Commit(std::move(*s)).status();
  }
  std::unique_ptr<Trainer> trainer_;
  std::vector<Contribution> good_;
  v1::Status before_;
  std::vector<float> params_;
};

TEST_F(BadInputTest, UnknownJob) {
  auto h = Header();
  h.set_job_id("nope");
  EXPECT_EQ(trainer_->BeginPush(h).status().code(), absl::StatusCode::kNotFound);
  ExpectUnchanged();
}

TEST_F(BadInputTest, UnknownWorker) {
  auto h = Header();
  h.set_worker(2);
  EXPECT_EQ(trainer_->BeginPush(h).status().code(), absl::StatusCode::kInvalidArgument);
  ExpectUnchanged();
}

TEST_F(BadInputTest, AbsurdSizeIsRejectedBeforeAllocation) {
  auto h = Header();
  h.set_num_elements(uint64_t{1} << 50);
  auto s = trainer_->BeginPush(h);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("declares"), std::string::npos);
  ExpectUnchanged();
}

TEST_F(BadInputTest, WrongTensorIndexPastEndOverlapMissingNaN) {
  const auto& g = good_[1].grad;
  auto code = [&](std::function<absl::Status(PushSession&)> feed) { return Chunked(Header(), feed).code(); };
  EXPECT_EQ(code([&](PushSession& s) { return s.AddChunk(2, 0, testing::Bytes(g.data(), 4)); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([&](PushSession& s) { return s.AddChunk(1, 8, testing::Bytes(g.data(), 4)); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([&](PushSession& s) { return s.AddChunk(0, 0, std::string(7, '\0')); }),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code([&](PushSession& s) {
              auto st = s.AddChunk(0, 0, testing::Bytes(g.data(), 100));
              return st.ok() ? s.AddChunk(0, 99, testing::Bytes(g.data(), 10)) : st;
            }),
            absl::StatusCode::kInvalidArgument);
  // Missing chunks: everything but tensor "b" arrives, then Commit.
  absl::Status missing =
      Chunked(Header(), [&](PushSession& s) { return s.AddChunk(0, 0, testing::Bytes(g.data(), 407)); });
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("tensor 'b'"), std::string::npos) << missing;
  std::vector<float> nan = g;
  nan[17] = std::nanf("");
  absl::Status s = Chunked(Header(), [&](PushSession& p) { return p.AddChunk(0, 0, testing::Bytes(nan.data(), 407)); });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("not finite"), std::string::npos) << s;
  ExpectUnchanged();
}

TEST_F(BadInputTest, PushBeforeJoin) {
  auto trainer = Trainer::Create(SmallJob(2, 3), TrainerOptions());
  ASSERT_TRUE(trainer.ok());
  auto s = (*trainer)->BeginPush(Header());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("Join"), std::string::npos);
  ExpectUnchanged();
}

TEST_F(BadInputTest, AbsurdSamplesAndSecondKeyForSameWindow) {
  auto h = Header();
  h.set_samples(uint64_t{1} << 50);
  EXPECT_EQ(trainer_->BeginPush(h).status().code(), absl::StatusCode::kInvalidArgument);
  Contribution again = good_[0];
  again.key = 77;
  EXPECT_EQ(Push(*trainer_, again).status().code(), absl::StatusCode::kFailedPrecondition);
  ExpectUnchanged();
}

// Shared memory, driven directly: a worker attaches, writes its gradient
// into its segment and pushes the header only. NaN in the segment is
// refused and counts nothing; the results equal the chunked path's bits.

}  // namespace
}  // namespace gradacc::trainer_fixtures
