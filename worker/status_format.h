// Human-readable rendering of gradacc.v1.Status (the `gradacc status` table).
#ifndef GRADACC_WORKER_STATUS_FORMAT_H_
#define GRADACC_WORKER_STATUS_FORMAT_H_

#include <string>

#include "gradacc/v1/control.pb.h"

namespace gradacc {

std::string FormatStatusTable(const v1::Status& status);
// A worker's TRANSPORT column: "shared memory", "gRPC", "gRPC (shared memory
// failed: <why>)", "gRPC (no shared memory: <why>)", "via worker N
// (hierarchical)", or "" before its first push.
std::string TransportText(const v1::Status& status, const v1::WorkerStatus& worker);
// One line per step of the ledger (`gradacc steps`).
std::string FormatStepsTable(const v1::GetStepsResponse& steps);

}  // namespace gradacc

#endif  // GRADACC_WORKER_STATUS_FORMAT_H_
