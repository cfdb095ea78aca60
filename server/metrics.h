// The Prometheus text exposition of a server's state (served on
// --metrics_listen at /metrics). Names follow Prometheus conventions:
// gradacc_ prefix, _total counters, base units (_seconds, _bytes).
#ifndef GRADACC_SERVER_METRICS_H_
#define GRADACC_SERVER_METRICS_H_

#include <string>
#include <vector>

#include "gradacc/v1/control.pb.h"
#include "server/counters.h"

namespace gradacc {

std::string RenderPrometheus(const v1::Status& status, const TrainerCounters& counters);

// One shard's state, as RenderPrometheus takes it.
struct ShardMetrics {
  v1::Status status;
  TrainerCounters counters;
};

// Every shard a process serves: each metric's HELP and TYPE once, then its
// samples shard by shard. Samples of a sharded job (num_shards > 1) carry a
// shard="<i>" label after job.
std::string RenderPrometheus(const std::vector<ShardMetrics>& shards);

}  // namespace gradacc

#endif  // GRADACC_SERVER_METRICS_H_
