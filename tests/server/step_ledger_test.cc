// Unit tests of StepLedger: every record and late note in the file, failed writes retried, recovery
// from a checkpoint appends only what the file lacks.
#include "server/step_ledger.h"

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

TEST(StepLedgerTest, FileHoldsEveryRecordAndLateNotes) {
  const std::string path = TempDir("ledger") + "/ledger.jsonl";
  {
    StepLedger ledger(path);
    for (uint64_t s = 1; s <= 3; ++s) {
      v1::StepRecord r;
      r.set_step(s);
      r.set_window(s - 1);
      r.add_contributions()->set_worker(0);
      ledger.Append(r);
    }
    ledger.NoteLate({0, 1, 1, "duplicate"});
    ledger.Flush();
    EXPECT_EQ(ledger.Get(2, 0).steps_size(), 2);
    EXPECT_EQ(ledger.Get(2, 2).steps(0).late_size(), 1);
  }
  const std::string text = *ReadFileToString(path);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4) << text;
  EXPECT_NE(text.find("\"outcome\":\"duplicate\""), std::string::npos);
}

// A write that fails (here: the folder is missing; on a full disk, ENOSPC)
// keeps its lines queued, still unlogged (so checkpoints carry them), and
// retries until it succeeds: no record is dropped.

TEST(StepLedgerTest, FailedWritesAreRetriedNotDropped) {
  const std::string dir = TempDir("ledger_retry") + "/later";
  const std::string path = dir + "/ledger.jsonl";
  {
    StepLedger ledger(path);
    for (uint64_t s = 1; s <= 3; ++s) {
      v1::StepRecord r;
      r.set_step(s);
      ledger.Append(r);
    }
    absl::SleepFor(absl::Milliseconds(200));  // the first attempts fail
    EXPECT_EQ(ledger.Unlogged().size(), 3u);
    ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
    const absl::Time give_up = absl::Now() + absl::Seconds(20);
    while (!ledger.Unlogged().empty() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(50));
    EXPECT_TRUE(ledger.Unlogged().empty());
  }
  const std::string text = ReadFileToString(path).value_or("");
  for (int s = 1; s <= 3; ++s) EXPECT_NE(text.find(absl::StrCat("\"step\":\"", s, "\"")), std::string::npos) << text;
}

v1::StepRecord Record(uint64_t step) {
  v1::StepRecord r;
  r.set_step(step);
  r.set_window(step - 1);
  return r;
}

TEST(StepLedgerTest, RecoverAppendsOnlyTheStepsTheFileLacks) {
  const std::string path = TempDir("ledger_recover") + "/ledger.jsonl";
  // Steps 1 and 2 are in the file; step 3's line was cut short by a kill.
  std::ofstream(path) << "{\"step\":\"1\",\"window\":\"0\"}\n{\"window\":\"1\",\"step\":\"2\"}\n{\"step\":\"3\",\"wi";
  google::protobuf::RepeatedPtrField<v1::StepRecord> held;
  for (uint64_t step : {2, 3, 4}) *held.Add() = Record(step);
  std::vector<uint64_t> recovered;
  {
    StepLedger ledger(path);
    recovered = ledger.Recover(held);
    EXPECT_TRUE(ledger.Unlogged().empty());
    ledger.Append(Record(5));
    ledger.Flush();
    EXPECT_TRUE(ledger.Unlogged().empty()) << "written";
    const v1::GetStepsResponse kept = ledger.Get(0, 0);
    ASSERT_EQ(kept.steps_size(), 3);
    EXPECT_TRUE(kept.steps(0).recovered());
    EXPECT_FALSE(kept.steps(2).recovered());
  }
  EXPECT_EQ(recovered, (std::vector<uint64_t>{3, 4}));
  const std::string text = ReadFileToString(path).value();
  EXPECT_NE(text.find("{\"step\":\"3\",\"wi\n{\"step\":\"3\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"step\":\"4\",\"window\":\"3\",\"recovered\":true"), std::string::npos) << text;
  EXPECT_EQ(text.find("\"step\":\"2\",\"window\":\"1\",\"recovered\""), std::string::npos) << text;
}

}  // namespace
}  // namespace gradacc
