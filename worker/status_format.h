// Human-readable rendering of gradacc.v1.Status (the `gradacc status` table).
#ifndef GRADACC_WORKER_STATUS_FORMAT_H_
#define GRADACC_WORKER_STATUS_FORMAT_H_

#include <string>

#include "gradacc/v1/control.pb.h"

namespace gradacc {

std::string FormatStatusTable(const v1::Status& status);
// One line per step of the ledger (`gradacc steps`).
std::string FormatStepsTable(const v1::GetStepsResponse& steps);

}  // namespace gradacc

#endif  // GRADACC_WORKER_STATUS_FORMAT_H_
