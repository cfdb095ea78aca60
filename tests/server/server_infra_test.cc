// Unit tests of the trainer's infrastructure: DeadlineQueue, TaskThread,
// VersionPublisher, StepLedger (and its recovery from a checkpoint),
// Checkpointer (sticky failures, the refusal to start over, counted
// resumes), Failpoints, ShmTransport (a fresh segment per attach) and
// StragglerTracker.
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "common/errors.h"
#include "common/files.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "server/checkpointer.h"
#include "server/deadline_queue.h"
#include "server/failpoints.h"
#include "server/shm_transport.h"
#include "server/step_ledger.h"
#include "server/straggler_tracker.h"
#include "server/task_thread.h"
#include "server/version_publisher.h"

namespace gradacc {
namespace {

// A one-shot event TSan can see (absl::Notification is Debian's,
// uninstrumented).
class Event {
 public:
  void Notify() {
    MutexLock lock(&mu_);
    done_ = true;
  }
  bool WaitFor(absl::Duration timeout) {
    MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(Condition(&done_), timeout);
  }

 private:
  Mutex mu_;
  bool done_ = false;
};

std::string TempDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + std::to_string(getpid()) + "_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(DeadlineQueueTest, RunsInDeadlineOrderAndCancels) {
  DeadlineQueue q;
  std::vector<int> order;
  gradacc::Mutex mu;
  Event done;
  const absl::Time now = absl::Now();
  q.Schedule(now + absl::Milliseconds(60), [&] {
    gradacc::MutexLock lock(&mu);
    order.push_back(3);
    done.Notify();
  });
  const uint64_t cancelled = q.Schedule(now + absl::Milliseconds(20), [&] { ADD_FAILURE() << "cancelled ran"; });
  q.Schedule(now + absl::Milliseconds(40), [&] {
    gradacc::MutexLock lock(&mu);
    order.push_back(2);
  });
  q.Schedule(now - absl::Seconds(1), [&] {  // already due
    gradacc::MutexLock lock(&mu);
    order.push_back(1);
  });
  EXPECT_TRUE(q.Cancel(cancelled));
  EXPECT_FALSE(q.Cancel(cancelled));
  ASSERT_TRUE(done.WaitFor(absl::Seconds(10)));
  gradacc::MutexLock lock(&mu);
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3}));
}

TEST(TaskThreadTest, RunsInOrderAndStopWakesSleepers) {
  TaskThread t;
  std::vector<int> seen;
  for (int i = 0; i < 5; ++i) t.Post([&seen, i] { seen.push_back(i); });
  ASSERT_TRUE(t.Run([] {}, absl::Seconds(10)));
  EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4}));
  std::atomic<bool> gave_up{false};
  t.Post([&] { gave_up = t.Sleep(absl::Hours(1)); });
  t.Stop();
  ASSERT_TRUE(t.Run([] {}, absl::Seconds(10))) << "Stop must wake a sleeping task";
  EXPECT_TRUE(gave_up);
}

std::shared_ptr<const ParamSnapshot> Snap(uint64_t version, bool done = false) {
  auto s = std::make_shared<ParamSnapshot>();
  s->version = version;
  s->header.mutable_header()->set_version(version);
  s->header.mutable_header()->set_job_done(done);
  return s;
}

TEST(VersionPublisherTest, ParksUntilPublishedAndBoundsTheWait) {
  DeadlineQueue deadlines;
  VersionPublisher p(Snap(0), &deadlines, absl::Milliseconds(100));
  uint64_t got = 99;
  EXPECT_EQ(p.Wait(0, [&](auto s) { got = (*s)->version; }), 0u) << "version 0 exists";
  EXPECT_EQ(got, 0u);
  uint64_t woke = 0;
  const uint64_t parked = p.Wait(2, [&](auto s) { woke = (*s)->version; });
  ASSERT_NE(parked, 0u);
  EXPECT_TRUE(p.Publish(Snap(1)).empty()) << "version 1 does not satisfy min_version 2";
  auto ready = p.Publish(Snap(2));
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(woke, 0u) << "answered by the caller, outside the lock";
  ready[0]();
  EXPECT_EQ(woke, 2u);
  Event expired;
  absl::StatusCode code = absl::StatusCode::kOk;
  p.Wait(9, [&](auto s) {
    code = s.status().code();
    expired.Notify();
  });
  ASSERT_TRUE(expired.WaitFor(absl::Seconds(10)));
  EXPECT_EQ(code, absl::StatusCode::kDeadlineExceeded);
  const uint64_t cancelled = p.Wait(9, [&](auto) { ADD_FAILURE() << "cancelled waiter ran"; });
  EXPECT_TRUE(p.Cancel(cancelled));
  absl::Status stopped;
  p.Wait(9, [&](auto s) { stopped = s.status(); });
  for (auto& r : p.Stop()) r();
  EXPECT_EQ(ReasonOf(stopped), v1::ERROR_REASON_SHUTTING_DOWN);
  EXPECT_EQ(p.Publish(Snap(3, true)).size(), 0u);
}

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

TEST(FailpointsTest, ParsesOnceAndRefusesTypos) {
  EXPECT_TRUE(Failpoints::Parse({"push:3:2", "mid_broadcast:1", "after_publish:0", "before_checkpoint:4",
                                 "mid_checkpoint:2", "after_checkpoint:5"})
                  .ok());
  EXPECT_FALSE(Failpoints::Parse({"push:3"}).ok());
  EXPECT_FALSE(Failpoints::Parse({"mid_brodcast:1"}).ok());
  EXPECT_FALSE(Failpoints::Parse({"push:x:1"}).ok());
  // A failpoint that does not match does nothing.
  Failpoints::Parse({"push:3:2"})->MaybeKill(Failpoints::Event::kPush, 3, 1);
}

TEST(ShmTransportTest, EveryAttachGetsAFreshSegment) {
  const std::string dir = TempDir("shm");
  const std::vector<float> params(100, 1.0f);
  ShmTransport shm(dir, false, 100, 2, params, /*fast_path=*/true);
  ASSERT_TRUE(shm.on()) << shm.off_reason();
  EXPECT_EQ(shm.params_data()[99], 1.0f);
  const v1::AttachSharedMemoryResponse first = shm.Attach(0, true);
  ASSERT_TRUE(first.available()) << first.reason();
  auto held = shm.SegmentFor(0, first.generation());
  ASSERT_TRUE(held.ok());
  (*held)->data()[0] = 42;  // an accepted contribution's bytes
  const v1::AttachSharedMemoryResponse second = shm.Attach(0, true);
  ASSERT_TRUE(second.available());
  EXPECT_NE(second.grad_path(), first.grad_path());
  EXPECT_NE(second.generation(), first.generation());
  EXPECT_EQ(ReasonOf(shm.SegmentFor(0, first.generation()).status()), v1::ERROR_REASON_NOT_ATTACHED);
  auto fresh = shm.SegmentFor(0, second.generation());
  ASSERT_TRUE(fresh.ok());
  fresh.value()->data()[0] = 7;  // the restarted worker writes its new segment
  EXPECT_EQ((*held)->data()[0], 42) << "what was accepted does not change";
  EXPECT_EQ(ReasonOf(shm.SegmentFor(1, 0).status()), v1::ERROR_REASON_NOT_ATTACHED);
  // Generations of a server this one replaced are told apart from its own.
  EXPECT_FALSE(shm.FromEarlierServer(first.generation()));
  EXPECT_FALSE(shm.FromEarlierServer(0));
  EXPECT_TRUE(shm.FromEarlierServer(first.generation() - 1));
  shm.BeginParamsWrite(3);
  shm.Publish(4);
  ShmTransport off("", false, 100, 2, params, /*fast_path=*/true);
  EXPECT_FALSE(off.on());
  EXPECT_FALSE(off.Attach(0, true).available());
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

TEST(CheckpointerTest, EveryResumeIsCountedInItsFolder) {
  const std::string dir = TempDir("restarts");
  EXPECT_EQ(Checkpointer::CountResume(dir, 0), 1u);
  EXPECT_EQ(Checkpointer::CountResume(dir, 0), 2u) << "a resume from the same checkpoint counts again";
  EXPECT_EQ(Checkpointer::CountResume(dir, 7), 8u) << "the checkpoint's count when it is larger";
  EXPECT_EQ(ReadFileToString(dir + "/RESTARTS").value(), "8\n");
}

// A window of `n` workers that arrived `after_ms` after its opening (-1:
// missing), closed `closed_ms` after it.
ClosingWindow WindowOf(uint64_t number, const std::vector<int>& after_ms, int closed_ms) {
  ClosingWindow w;
  w.window = number;
  w.opened = absl::FromUnixSeconds(1000);
  w.last_arrival = w.opened + absl::Milliseconds(closed_ms);
  for (uint32_t i = 0; i < after_ms.size(); ++i) {
    if (after_ms[i] < 0) {
      w.missing.push_back(i);
      continue;
    }
    Slot slot;
    slot.arrival = w.opened + absl::Milliseconds(after_ms[i]);
    w.slots.push_back(std::move(slot));
    w.workers.push_back(i);
  }
  return w;
}

TEST(StragglerTrackerTest, NamesTheSlowestAndStragglersAfterWindowsInARow) {
  StragglerTracker tracker(4, 2);
  std::vector<uint32_t> fresh;
  v1::WindowArrivals a = tracker.Observe(WindowOf(0, {10, 40, 20, 30}, 40), &fresh);
  EXPECT_DOUBLE_EQ(a.median_after_open_seconds(), 0.025);
  EXPECT_EQ(a.slowest_worker(), 1);
  EXPECT_NEAR(a.slowest_behind_median_seconds(), 0.015, 1e-9);
  EXPECT_FALSE(a.slowest_missing());
  ASSERT_EQ(a.workers_size(), 4);
  EXPECT_NEAR(a.workers(0).behind_median_seconds(), -0.015, 1e-9);
  // Worker 3 misses a window: slowest (missing, at least until the close),
  // not a straggler yet.
  a = tracker.Observe(WindowOf(1, {10, 20, 30, -1}, 500), &fresh);
  EXPECT_EQ(a.slowest_worker(), 3);
  EXPECT_TRUE(a.slowest_missing());
  EXPECT_NEAR(a.workers(3).after_open_seconds(), 0.5, 1e-9);
  EXPECT_NEAR(a.slowest_behind_median_seconds(), 0.48, 1e-9);
  EXPECT_TRUE(fresh.empty());
  EXPECT_EQ(tracker.late_windows(3), 1u);
  // Two in a row: a straggler; worker 1 missing once is the less slow.
  a = tracker.Observe(WindowOf(2, {10, -1, 30, -1}, 500), &fresh);
  EXPECT_EQ(a.slowest_worker(), 3);
  EXPECT_EQ(fresh, std::vector<uint32_t>{3});
  EXPECT_TRUE(tracker.straggler(3));
  EXPECT_FALSE(tracker.straggler(1));
  EXPECT_EQ(std::vector<uint32_t>(a.stragglers().begin(), a.stragglers().end()), std::vector<uint32_t>{3});
  v1::Status status;
  tracker.Fill(&status);
  EXPECT_EQ(status.stragglers_size(), 1);
  EXPECT_EQ(status.straggler_windows(), 2u);
  EXPECT_EQ(status.last_window_arrivals().window(), 2u);
  // Contributing again ends it.
  fresh.clear();
  a = tracker.Observe(WindowOf(3, {10, 20, 30, 35}, 35), &fresh);
  EXPECT_FALSE(tracker.straggler(3));
  EXPECT_EQ(tracker.late_windows(3), 0u);
  EXPECT_EQ(a.stragglers_size(), 0);
  StragglerTracker never(2, 0);
  for (uint64_t w = 0; w < 5; ++w) never.Observe(WindowOf(w, {10, -1}, 100), &fresh);
  EXPECT_FALSE(never.straggler(1));
  EXPECT_EQ(never.late_windows(1), 5u);
}

}  // namespace
}  // namespace gradacc
