// Words for gradacc.v1.Status and the step ledger: the `gradacc status` and
// `gradacc steps` tables and the labels the dashboard shows. The server sends
// data (enums, the transport, checkpoint health); this is the one place that
// turns it into text, and tests/worker/status_format_test.cc holds every label to
// every value of its enum's descriptor. Pure functions; thread-safe.
#ifndef GRADACC_WORKER_CLI_STATUS_FORMAT_H_
#define GRADACC_WORKER_CLI_STATUS_FORMAT_H_

#include <string>
#include <vector>

#include "google/protobuf/struct.pb.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/job.pb.h"

namespace gradacc {

// "running", "waiting for workers", ...
std::string JobStateLabel(v1::JobState state);
// "computing" (joined, not pushed yet), "pushed", "lost", ...
std::string WorkerStateLabel(v1::WorkerState state);
std::string OptimizerLabel(v1::OptimizerSpec::Kind kind);
std::string ReductionLabel(v1::Reduction reduction);
// "-" (has not pushed yet), "shared memory", "gRPC",
// "gRPC (shared memory failed: <why>)", "gRPC (no shared memory: <why>)" or
// "via worker N (hierarchical)".
std::string TransportLabel(const v1::WorkerStatus& worker, const v1::Status& status);
// The last closed window's slowest worker and by how much behind the median
// ("" when none): "worker 2 in window 7: missing, over 410 ms behind ...".
std::string SlowestLabel(const v1::WindowArrivals& arrivals);
// "straggler: missing from 3 windows in a row", "missing from the last 1
// window(s)", or "".
std::string StragglerLabel(const v1::WorkerStatus& worker);
// Durable state in one line ("" when the server keeps no checkpoints and
// none failed).
std::string CheckpointLabel(const v1::Status& status);
// What needs someone's attention, most important first: checkpoints failing
// (nothing new is published), a server behind its workers, stragglers.
std::vector<std::string> StatusAlerts(const v1::Status& status);

std::string FormatStatusTable(const v1::Status& status);
// One line per step of the ledger (`gradacc steps`).
std::string FormatStepsTable(const v1::GetStepsResponse& steps);

// The labels above for a whole status, as the dashboard's page reads them:
// {"state": ..., "alerts": [...], "checkpoint": ..., "slowest": ...,
// "workers": [{"worker", "state", "transport", "straggler"}, ...]} (in the
// order of status.workers).
google::protobuf::Struct StatusDisplay(const v1::Status& status);

}  // namespace gradacc

#endif  // GRADACC_WORKER_CLI_STATUS_FORMAT_H_
