// The Prometheus text exposition of a server's state (served on
// --metrics_listen at /metrics). Names follow Prometheus conventions:
// gradacc_ prefix, _total counters, base units (_seconds, _bytes).
#ifndef GRADACC_SERVER_METRICS_H_
#define GRADACC_SERVER_METRICS_H_

#include <string>

#include "gradacc/v1/control.pb.h"
#include "server/counters.h"

namespace gradacc {

std::string RenderPrometheus(const v1::Status& status, const TrainerCounters& counters);

}  // namespace gradacc

#endif  // GRADACC_SERVER_METRICS_H_
