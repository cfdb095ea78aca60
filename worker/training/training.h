// The worker's training loop: for each window, K micro-batches of this
// worker's samples (worker/training/data_order.h) go forward and backward on the
// backend, adding into the client's gradient buffer; then Client::Step
// pushes, waits for the window to close and installs the new parameters.
// Worker 0 also prints progress, evaluates test accuracy at the end of every
// epoch and after the last step, and reports it to the server.
#ifndef GRADACC_WORKER_TRAINING_TRAINING_H_
#define GRADACC_WORKER_TRAINING_TRAINING_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/client/client.h"
#include "worker/client/training_client.h"
#include "worker/training/data_order.h"
#include "worker/training/dataset.h"
#include "worker/training/model.h"

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

// A job with a data plan (JobSpec.data_plan): windows are computed from the
// plan each one comes with (data_order.h); a worker that is not a member of
// the open window waits for the next. RunTraining calls it for such jobs.
absl::StatusOr<TrainingResult> RunPlannedTraining(TrainingClient& client, Backend& backend, const Dataset& train,
                                                  const Dataset* test, const TrainingOptions& options);

// The window geometry this worker uses for `job` and `train`.
absl::StatusOr<WindowGeometry> GeometryFor(const v1::JobSpec& job, const Dataset& train,
                                           const TrainingOptions& options);

absl::StatusOr<TrainingResult> RunTraining(TrainingClient& client, Backend& backend, const Dataset& train,
                                           const Dataset* test, const TrainingOptions& options);
inline absl::StatusOr<TrainingResult> RunTraining(Client& client, Backend& backend, const Dataset& train,
                                                  const Dataset* test, const TrainingOptions& options) {
  ClientAdapter adapter(client);
  return RunTraining(adapter, backend, train, test, options);
}

// One micro-batch: the samples perm[range] forward and backward, added into
// the client's gradients, then counted (AddMicroBatch; an empty range counts
// as a micro-batch of 0 samples). x and y are the batch's scratch.
absl::Status ComputeMicroBatch(TrainingClient& client, Backend& backend, const Dataset& train,
                               const std::vector<uint32_t>& perm, WindowGeometry::Range range, std::vector<float>& x,
                               std::vector<uint8_t>& y);

// Test-set accuracy of the backend's current parameters.
absl::StatusOr<double> Evaluate(Backend& backend, const Dataset& test);

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_TRAINING_H_
