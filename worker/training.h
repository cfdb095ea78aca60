// The worker's training loop: for each window, K micro-batches of this
// worker's samples (worker/data_order.h) go forward and backward on the
// backend, adding into the client's gradient buffer; then Client::Step
// pushes, waits for the window to close and installs the new parameters.
// Worker 0 also prints progress, evaluates test accuracy at the end of every
// epoch and after the last step, and reports it to the server.
#ifndef GRADACC_WORKER_TRAINING_H_
#define GRADACC_WORKER_TRAINING_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/statusor.h"
#include "worker/client.h"
#include "worker/data_order.h"
#include "worker/dataset.h"
#include "worker/model.h"

namespace gradacc {

struct TrainingOptions {
  uint32_t micro_batch = 0;         // samples per micro-batch; 0 = the job's
  uint32_t accumulation_steps = 0;  // micro-batches per window; 0 = the job's
  // When set, must agree with the job's total_steps (the server decides when
  // the job ends; a disagreement is reported before training starts).
  uint64_t steps = 0;
  uint64_t epochs = 0;
  uint64_t log_every = 0;  // progress line every N steps; 0 = ~20 lines a run
  bool report = false;     // print progress and evaluate (worker 0)
  // "lines" (one line per log_every steps) or "bar" (a bar redrawn in place
  // on a terminal; falls back to lines when `out` is not one).
  std::string progress = "lines";
  std::FILE* out = stdout;
};

struct TrainingResult {
  uint64_t steps = 0;          // the version reached
  double last_loss = 0;        // the server's loss of the last window
  double test_accuracy = -1;   // last evaluation, when report
};

// The window geometry this worker uses for `job` and `train`.
absl::StatusOr<WindowGeometry> GeometryFor(const v1::JobSpec& job, const Dataset& train,
                                           const TrainingOptions& options);

absl::StatusOr<TrainingResult> RunTraining(Client& client, Backend& backend, const Dataset& train,
                                           const Dataset* test, const TrainingOptions& options);

// Test-set accuracy of the backend's current parameters.
absl::StatusOr<double> Evaluate(Backend& backend, const Dataset& test);

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_H_
