// The words of `gradacc status` and the dashboard, against every value of
// every enum they show (the proto descriptors), the transport column as it
// read when the server sent text, and checkpoint health.
#include "worker/cli/status_format.h"

#include <set>
#include <string>

#include "absl/strings/match.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

using google::protobuf::EnumDescriptor;

// Calls `label` with every value of `descriptor`; each label is non-empty,
// not "unknown", and (when `distinct`) different from every other.
template <typename E, typename F>
void ExpectEveryValueLabelled(const EnumDescriptor* descriptor, F label, bool distinct) {
  std::set<std::string> seen;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto value = static_cast<E>(descriptor->value(i)->number());
    const std::string text = label(value);
    SCOPED_TRACE(descriptor->value(i)->name());
    EXPECT_FALSE(text.empty());
    EXPECT_FALSE(absl::StrContains(text, "unknown")) << text;
    if (distinct) {
      EXPECT_TRUE(seen.insert(text).second) << "two values read '" << text << "'";
    }
  }
}

TEST(StatusFormatTest, EveryEnumValueHasAWord) {
  ExpectEveryValueLabelled<v1::JobState>(v1::JobState_descriptor(), JobStateLabel, true);
  ExpectEveryValueLabelled<v1::WorkerState>(v1::WorkerState_descriptor(), WorkerStateLabel, true);
  ExpectEveryValueLabelled<v1::Reduction>(v1::Reduction_descriptor(), ReductionLabel, true);
  // UNSPECIFIED means SGD.
  ExpectEveryValueLabelled<v1::OptimizerSpec::Kind>(v1::OptimizerSpec::Kind_descriptor(), OptimizerLabel, false);
  v1::Status status;
  ExpectEveryValueLabelled<v1::Transport>(
      v1::Transport_descriptor(),
      [&](v1::Transport t) {
        v1::WorkerStatus w;
        w.set_transport(t);
        w.set_covered_by(t == v1::TRANSPORT_HIERARCHICAL ? 0 : -1);
        return TransportLabel(w, status);
      },
      true);
}

TEST(StatusFormatTest, TheWordsUsersKnow) {
  EXPECT_EQ(WorkerStateLabel(v1::WORKER_STATE_LOST), "lost");
  EXPECT_EQ(WorkerStateLabel(v1::WORKER_STATE_JOINED), "computing");
  EXPECT_EQ(WorkerStateLabel(v1::WORKER_STATE_NEVER_JOINED), "never joined");
  EXPECT_EQ(JobStateLabel(v1::JOB_STATE_WAITING), "waiting for workers");
  EXPECT_EQ(JobStateLabel(v1::JOB_STATE_DONE), "done");
  EXPECT_EQ(OptimizerLabel(v1::OptimizerSpec::KIND_ADAMW), "AdamW");
  EXPECT_EQ(ReductionLabel(v1::REDUCTION_MEAN_OVER_SAMPLES), "mean over samples");
  // A value a newer server may send.
  EXPECT_EQ(WorkerStateLabel(static_cast<v1::WorkerState>(42)), "unknown (42)");
}

TEST(StatusFormatTest, TheTransportColumnReadsAsBefore) {
  v1::Status status;
  v1::WorkerStatus w;
  EXPECT_EQ(TransportLabel(w, status), "-");
  w.set_transport(v1::TRANSPORT_SHARED_MEMORY);
  EXPECT_EQ(TransportLabel(w, status), "shared memory");
  w.set_transport(v1::TRANSPORT_GRPC);
  EXPECT_EQ(TransportLabel(w, status), "gRPC");
  status.set_shared_memory_off_reason("off on this server (--shared_memory_dir is empty)");
  EXPECT_EQ(TransportLabel(w, status), "gRPC (no shared memory: off on this server (--shared_memory_dir is empty))");
  w.set_shared_memory_failure("cannot open shared-memory segment '/dev/shm/x'");
  EXPECT_EQ(TransportLabel(w, status), "gRPC (shared memory failed: cannot open shared-memory segment '/dev/shm/x')");
  w.set_transport(v1::TRANSPORT_HIERARCHICAL);
  w.set_covered_by(2);
  EXPECT_EQ(TransportLabel(w, status), "via worker 2 (hierarchical)");
}

v1::Status ARunningStatus() {
  v1::Status s;
  s.set_job_id("multi");
  s.set_state(v1::JOB_STATE_RUNNING);
  s.set_step(7);
  s.set_total_steps(12);
  s.set_version(7);
  s.set_server_time_unix_micros(100'000'000);
  for (uint32_t k = 0; k < 2; ++k) {
    v1::WorkerStatus* w = s.add_workers();
    w->set_worker(k);
    w->set_covered_by(-1);
  }
  s.mutable_workers(0)->set_state(v1::WORKER_STATE_LOST);
  s.mutable_workers(0)->set_transport(v1::TRANSPORT_GRPC);
  s.mutable_workers(1)->set_state(v1::WORKER_STATE_PUSHED);
  s.mutable_workers(1)->set_transport(v1::TRANSPORT_SHARED_MEMORY);
  s.mutable_checkpoint()->set_healthy(true);
  return s;
}

TEST(StatusFormatTest, TheTableShowsALostWorkerAndItsTransport) {
  const std::string table = FormatStatusTable(ARunningStatus());
  EXPECT_TRUE(absl::StrContains(table, "job          multi  (running)")) << table;
  EXPECT_FALSE(absl::StrContains(table, "unknown")) << table;
  EXPECT_TRUE(absl::StrContains(table, "0       lost ")) << table;
  EXPECT_TRUE(absl::StrContains(table, "1       pushed ")) << table;
  EXPECT_TRUE(absl::StrContains(table, "gRPC\n")) << table;
  EXPECT_TRUE(absl::StrContains(table, "shared memory\n")) << table;
  EXPECT_FALSE(absl::StrContains(table, "!!")) << table;
  EXPECT_FALSE(absl::StrContains(table, "checkpoint")) << "no checkpoints, nothing to say:\n" << table;
}

TEST(StatusFormatTest, FailingCheckpointsAreTheFirstThingShown) {
  v1::Status s = ARunningStatus();
  s.set_checkpoint_dir("/ckpt");
  v1::CheckpointHealth* c = s.mutable_checkpoint();
  c->set_healthy(false);
  c->set_error("cannot write /ckpt/step-8: No space left on device");
  c->set_failures(3);
  c->set_failing_since_unix_micros(88'000'000);
  c->set_pending_version(8);
  const std::string table = FormatStatusTable(s);
  EXPECT_EQ(table.rfind("!! CHECKPOINTS FAILING", 0), 0u) << table;
  EXPECT_TRUE(absl::StrContains(table, "No space left on device")) << table;
  EXPECT_TRUE(absl::StrContains(table, "3 failed writes")) << table;
  EXPECT_TRUE(absl::StrContains(table, "since 12.0 s ago")) << table;
  EXPECT_TRUE(absl::StrContains(table, "version 8 waits for its checkpoint")) << table;
  EXPECT_TRUE(absl::StrContains(table, "\ncheckpoint   FAILING")) << table;

  c->Clear();
  c->set_healthy(true);
  c->set_failures(3);
  s.set_last_checkpoint_step(9);
  s.set_last_checkpoint_unix_micros(99'000'000);
  const std::string healthy = FormatStatusTable(s);
  EXPECT_FALSE(absl::StrContains(healthy, "!!")) << healthy;
  EXPECT_TRUE(absl::StrContains(healthy, "checkpoint   step 9 (1.0 s ago) in /ckpt; 3 failed writes earlier"))
      << healthy;
}

TEST(StatusFormatTest, AServerBehindItsWorkersIsAnAlert) {
  v1::Status s = ARunningStatus();
  s.set_workers_ahead_version(12);
  const auto alerts = StatusAlerts(s);
  ASSERT_EQ(alerts.size(), 1u);
  EXPECT_TRUE(absl::StrContains(alerts[0], "version 12")) << alerts[0];
  EXPECT_TRUE(absl::StrContains(alerts[0], "version 7")) << alerts[0];
}

TEST(StatusFormatTest, TheDashboardGetsTheSameWords) {
  v1::Status s = ARunningStatus();
  s.mutable_checkpoint()->set_healthy(false);
  s.mutable_checkpoint()->set_error("disk full");
  const google::protobuf::Struct display = StatusDisplay(s);
  const auto& f = display.fields();
  EXPECT_EQ(f.at("state").string_value(), "running");
  ASSERT_EQ(f.at("alerts").list_value().values_size(), 1);
  EXPECT_TRUE(absl::StrContains(f.at("alerts").list_value().values(0).string_value(), "disk full"));
  const auto& workers = f.at("workers").list_value();
  ASSERT_EQ(workers.values_size(), 2);
  EXPECT_EQ(workers.values(0).struct_value().fields().at("state").string_value(), "lost");
  EXPECT_EQ(workers.values(0).struct_value().fields().at("transport").string_value(), "gRPC");
  EXPECT_EQ(workers.values(1).struct_value().fields().at("transport").string_value(), "shared memory");
}

}  // namespace
}  // namespace gradacc
