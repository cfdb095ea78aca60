// RunPlannedTraining: the training loop of a job with a data plan
// (JobSpec.data_plan): each window is computed from the plan it came with
// (worker/training/data_order.h, PlannedSlot), so members may come and go
// at window boundaries and a resumed job may have another number of ranks.
#include <algorithm>
#include <optional>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/data_plan.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "worker/training/training.h"

namespace gradacc {
namespace {

absl::Status CheckPlannedOptions(const v1::JobSpec& job, const Dataset& train, const TrainingOptions& options) {
  const v1::WindowRule& w = job.window();
  if (train.size != job.data_plan().samples()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("the job plans epochs of %d samples but this worker has %d training samples (--train_limit "
                        "must match the server's worker_hints[\"train_samples\"])",
                        job.data_plan().samples(), train.size));
  }
  if ((options.micro_batch != 0 && options.micro_batch != w.micro_batch_size()) ||
      (options.accumulation_steps != 0 && options.accumulation_steps != w.micro_batches())) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "a job with a data plan fixes %d micro-batches of %d samples per member; drop --micro_batch and "
        "--accumulation_steps",
        w.micro_batches(), w.micro_batch_size()));
  }
  if (options.epochs != 0 && options.epochs != job.data_plan().epochs()) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--epochs=%d, but the server's job runs %d epochs", options.epochs, job.data_plan().epochs()));
  }
  if (options.steps != 0) return absl::FailedPreconditionError("a job with a data plan runs epochs, not --steps");
  return absl::OkStatus();
}

// This member's K micro-batches of the window `plan`, at position r.
absl::Status ComputePlanned(TrainingClient& client, Backend& backend, const Dataset& train, const v1::WindowPlan& plan,
                            int r, const std::vector<uint32_t>& perm, std::vector<float>& x, std::vector<uint8_t>& y) {
  const uint32_t k_count = std::max(1u, client.job().window().micro_batches());
  for (uint32_t k = 0; k < k_count; ++k) {
    const WindowGeometry::Range range =
        PlannedSlot(plan.offset(), plan.samples(), plan.members_size(), k_count, static_cast<uint32_t>(r), k);
    GRADACC_RETURN_IF_ERROR(ComputeMicroBatch(client, backend, train, perm, range, x, y));
  }
  return absl::OkStatus();
}

// Worker 0's lines: progress every log_every steps, test accuracy at the
// end of every epoch and of the job.
class PlannedReport {
 public:
  PlannedReport(const TrainingOptions& options, const v1::JobSpec& job, uint64_t epoch)
      : options_(options),
        epochs_(job.data_plan().epochs()),
        log_every_(options.log_every ? options.log_every : std::max<uint64_t>(1, job.total_steps() / 20)),
        epoch_(epoch),
        start_(absl::Now()) {
    absl::FPrintF(options.out,
                  "training job '%s' (elastic, data plan): %d epochs of %d samples, %d micro-batches of %d per member "
                  "per window, up to %d workers, from epoch %d\n",
                  job.job_id(), epochs_, job.data_plan().samples(), job.window().micro_batches(),
                  job.window().micro_batch_size(), job.window().max_workers(), epoch + 1);
    std::fflush(options.out);
  }

  absl::Status After(TrainingClient& client, Backend& backend, const Dataset* test, const StepResult& step,
                     uint64_t samples_done, TrainingResult& result) {
    const uint64_t epoch = client.plan().epoch();
    if (step.version % log_every_ == 0 || step.job_done) {
      const double elapsed = absl::ToDoubleSeconds(absl::Now() - start_);
      absl::FPrintF(options_.out, "step %d | epoch %d/%d | %d members | loss %.4f | %.0f samples/s\n", step.version,
                    std::min(epoch_ + 1, epochs_), epochs_, client.plan().members_size(), step.loss,
                    elapsed > 0 ? static_cast<double>(samples_done) / elapsed : 0.0);
    }
    if (test != nullptr && (epoch > epoch_ || step.job_done)) {
      GRADACC_ASSIGN_OR_RETURN(result.test_accuracy, Evaluate(backend, *test));
      absl::FPrintF(options_.out, "epoch %d (step %d): test accuracy %.2f%%\n", std::min(epoch, epochs_), step.version,
                    100 * result.test_accuracy);
      absl::Status reported = client.ReportTestAccuracy(result.test_accuracy, step.version);
      if (!reported.ok()) GRADACC_LOG(WARNING, "test accuracy not reported: %s", reported.ToString());
    }
    std::fflush(options_.out);
    epoch_ = epoch;
    return absl::OkStatus();
  }

 private:
  const TrainingOptions& options_;
  const uint64_t epochs_, log_every_;
  uint64_t epoch_;
  const absl::Time start_;
};

}  // namespace

absl::StatusOr<TrainingResult> RunPlannedTraining(TrainingClient& client, Backend& backend, const Dataset& train,
                                                  const Dataset* test, const TrainingOptions& options) {
  const v1::JobSpec& job = client.job();
  GRADACC_RETURN_IF_ERROR(CheckPlannedOptions(job, train, options));
  std::vector<float> x(uint64_t{job.window().micro_batch_size()} * train.features() + 1);
  std::vector<uint8_t> y(job.window().micro_batch_size() + 1);
  std::vector<uint32_t> perm;
  uint64_t perm_epoch = ~uint64_t{0};
  TrainingResult result;
  GRADACC_RETURN_IF_ERROR(backend.SetParameters(client.params()));
  std::optional<PlannedReport> report;
  if (options.report) report.emplace(options, job, client.plan().epoch());
  uint64_t samples_done = 0;
  while (!client.done()) {
    const v1::WindowPlan plan = client.plan();
    const int r = PlanPosition(plan, client.worker());
    StepResult step;
    if (plan.window() != client.version() || r < 0) {
      GRADACC_ASSIGN_OR_RETURN(step, client.WaitNextWindow());
    } else {
      if (plan.epoch() != perm_epoch) {
        perm = EpochPermutation(job.seed(), plan.epoch(), static_cast<uint32_t>(train.size));
        perm_epoch = plan.epoch();
      }
      GRADACC_RETURN_IF_ERROR(ComputePlanned(client, backend, train, plan, r, perm, x, y));
      GRADACC_ASSIGN_OR_RETURN(step, client.Step());
      if (!step.replanned) samples_done += plan.samples();
    }
    if (step.replanned) {
      GRADACC_LOG(INFO, "window %d's plan changed (the server restarted); recomputing", client.version());
      continue;
    }
    GRADACC_RETURN_IF_ERROR(backend.SetParameters(client.params()));
    result.steps = step.version;
    result.last_loss = step.loss;
    if (report.has_value()) GRADACC_RETURN_IF_ERROR(report->After(client, backend, test, step, samples_done, result));
  }
  return result;
}

}  // namespace gradacc
