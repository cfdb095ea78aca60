#include "worker/training/training.h"

#include <unistd.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/data_plan.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace gradacc {
namespace {

std::string Clock(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60);
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

}  // namespace

absl::StatusOr<WindowGeometry> GeometryFor(const v1::JobSpec& job, const Dataset& train,
                                           const TrainingOptions& options) {
  WindowGeometry g;
  g.samples = train.size;
  g.workers = job.window().num_workers();
  g.micro_batches = options.accumulation_steps ? options.accumulation_steps : job.window().micro_batches();
  g.micro_batch = options.micro_batch ? options.micro_batch : job.window().micro_batch_size();
  if (g.micro_batches == 0) g.micro_batches = 1;
  if (g.micro_batch == 0) {
    return absl::InvalidArgumentError("the job sets no micro_batch_size; pass --micro_batch");
  }
  if (g.samples == 0) return absl::InvalidArgumentError("the training set is empty");
  const uint64_t total = job.total_steps();
  const uint64_t w = g.windows_per_epoch();
  if (options.steps != 0 && options.steps != total) {
    return absl::FailedPreconditionError(
        absl::StrFormat("--steps=%d, but the server's job runs %d steps; start the server with --total_steps=%d",
                        options.steps, total, options.steps));
  }
  if (options.epochs != 0 && options.epochs * w != total) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--epochs=%d is %d steps of %d samples (%d workers x %d micro-batches x %d), but the server's job runs %d "
        "steps; start the server with --total_steps=%d",
        options.epochs, options.epochs * w, g.window_samples(), g.workers, g.micro_batches, g.micro_batch, total,
        options.epochs * w));
  }
  return g;
}

absl::Status ComputeMicroBatch(TrainingClient& client, Backend& backend, const Dataset& train,
                               const std::vector<uint32_t>& perm, WindowGeometry::Range range, std::vector<float>& x,
                               std::vector<uint8_t>& y) {
  const uint32_t n = static_cast<uint32_t>(range.end - range.begin);
  double loss = 0;
  if (n > 0) {
    train.Gather(absl::MakeConstSpan(perm.data() + range.begin, n), x.data(), y.data());
    GRADACC_ASSIGN_OR_RETURN(loss, backend.AccumulateGradients(x.data(), y.data(), n, client.grad()));
  }
  client.AddMicroBatch(n, loss);
  return absl::OkStatus();
}

absl::StatusOr<double> Evaluate(Backend& backend, const Dataset& test) {
  std::vector<uint32_t> all(test.size);
  for (uint32_t i = 0; i < test.size; ++i) all[i] = i;
  std::vector<float> x(test.size * test.features());
  std::vector<uint8_t> y(test.size);
  test.Gather(all, x.data(), y.data());
  GRADACC_ASSIGN_OR_RETURN(uint64_t correct, backend.CountCorrect(x.data(), y.data(), test.size));
  return static_cast<double>(correct) / static_cast<double>(test.size);
}

namespace {

// Worker 0's progress output: a line every log_every steps, or a bar redrawn
// in place on a terminal.
class Progress {
 public:
  Progress(const TrainingOptions& options, const WindowGeometry& geometry, uint64_t total, uint64_t first)
      : options_(options),
        total_(total),
        first_(first),
        per_epoch_(geometry.windows_per_epoch()),
        epochs_((total + per_epoch_ - 1) / per_epoch_),
        log_every_(options.log_every ? options.log_every : std::max<uint64_t>(1, total / 20)),
        bar_(options.progress == "bar" && isatty(fileno(options.out))),
        start_(absl::Now()) {}

  uint64_t per_epoch() const { return per_epoch_; }
  bool bar() const { return bar_; }

  void Begin(const v1::JobSpec& job, const WindowGeometry& g, const std::string& backend,
             const std::string& transport) const {
    absl::FPrintF(options_.out,
                  "training job '%s' on %s: %d workers x %d micro-batches of %d = %d samples/step, %d steps/epoch, "
                  "%d steps (%d epochs) from step %d\n",
                  job.job_id(), backend, g.workers, g.micro_batches, g.micro_batch, g.window_samples(), per_epoch_,
                  total_, epochs_, first_);
    absl::FPrintF(options_.out, "worker 0 moves data through %s\n", transport);
    std::fflush(options_.out);
  }

  // After the step that reached version `done`, `samples_done` samples in.
  void Stepped(const StepResult& step, uint64_t samples_done) const {
    const uint64_t done = step.version;
    if (!bar_ && done % log_every_ != 0 && !step.job_done && done != first_ + 1) return;
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start_);
    const double rate = elapsed > 0 ? static_cast<double>(samples_done) / elapsed : 0;
    const double eta =
        done > first_ ? elapsed / static_cast<double>(done - first_) * static_cast<double>(total_ - done) : 0;
    const uint64_t epoch = std::min<uint64_t>(done == 0 ? 1 : (done - 1) / per_epoch_ + 1, epochs_);
    if (bar_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(kWidth * done / std::max<uint64_t>(1, total_));
      absl::FPrintF(options_.out, "\r[%s%s] %3.0f%% step %d/%d epoch %d/%d loss %.4f %.0f samples/s ETA %s  ",
                    std::string(filled, '#'), std::string(kWidth - filled, '.'), 100.0 * done / total_, done, total_,
                    epoch, epochs_, step.loss, rate, Clock(eta));
      if (step.job_done) absl::FPrintF(options_.out, "\n");
    } else {
      absl::FPrintF(options_.out, "step %*d/%d | epoch %d/%d | loss %.4f | %.0f samples/s | ETA %s\n",
                    static_cast<int>(absl::StrCat(total_).size()), done, total_, epoch, epochs_, step.loss, rate,
                    Clock(eta));
    }
    std::fflush(options_.out);
  }

 private:
  const TrainingOptions& options_;
  const uint64_t total_, first_, per_epoch_, epochs_, log_every_;
  const bool bar_;
  const absl::Time start_;
};

// The window's K micro-batches of this worker: forward and backward, adding
// into the client's gradient buffer.
absl::Status ComputeWindow(TrainingClient& client, Backend& backend, const Dataset& train,
                           const WindowGeometry& geometry, const std::vector<uint32_t>& perm, uint64_t t,
                           std::vector<float>& x, std::vector<uint8_t>& y) {
  for (uint32_t k = 0; k < geometry.micro_batches; ++k) {
    GRADACC_RETURN_IF_ERROR(ComputeMicroBatch(client, backend, train, perm, geometry.Slot(t, client.worker(), k), x, y));
  }
  return absl::OkStatus();
}

// Test accuracy after the step that reached `done`, printed and reported.
absl::StatusOr<double> EvaluateAndReport(TrainingClient& client, Backend& backend, const Dataset& test,
                                         const Progress& progress, const StepResult& step, std::FILE* out) {
  const uint64_t done = step.version, per_epoch = progress.per_epoch();
  GRADACC_ASSIGN_OR_RETURN(double acc, Evaluate(backend, test));
  absl::FPrintF(out, "%s%s %d (step %d): test accuracy %.2f%%\n", progress.bar() && !step.job_done ? "\n" : "",
                done % per_epoch == 0 ? "epoch" : "after epoch fraction",
                done % per_epoch == 0 ? done / per_epoch : done / per_epoch + 1, done, 100 * acc);
  std::fflush(out);
  absl::Status reported = client.ReportTestAccuracy(acc, done);
  if (!reported.ok()) GRADACC_LOG(WARNING, "test accuracy not reported: %s", reported.ToString());
  return acc;
}

}  // namespace

absl::StatusOr<TrainingResult> RunTraining(TrainingClient& client, Backend& backend, const Dataset& train,
                                           const Dataset* test, const TrainingOptions& options) {
  const v1::JobSpec& job = client.job();
  if (HasDataPlan(job)) return RunPlannedTraining(client, backend, train, test, options);
  GRADACC_ASSIGN_OR_RETURN(WindowGeometry geometry, GeometryFor(job, train, options));
  const Progress progress(options, geometry, job.total_steps(), client.version());
  std::vector<float> x(uint64_t{geometry.micro_batch} * train.features() + 1);
  std::vector<uint8_t> y(geometry.micro_batch + 1);
  std::vector<uint32_t> perm;
  uint64_t perm_epoch = ~uint64_t{0};
  TrainingResult result;
  GRADACC_RETURN_IF_ERROR(backend.SetParameters(client.params()));
  if (options.report) progress.Begin(job, geometry, backend.name(), client.transport());
  uint64_t samples_done = 0;
  while (!client.done()) {
    const uint64_t t = client.version();
    if (const uint64_t epoch = t / progress.per_epoch(); epoch != perm_epoch) {
      perm = EpochPermutation(job.seed(), epoch, static_cast<uint32_t>(train.size));
      perm_epoch = epoch;
    }
    GRADACC_RETURN_IF_ERROR(ComputeWindow(client, backend, train, geometry, perm, t, x, y));
    GRADACC_ASSIGN_OR_RETURN(StepResult step, client.Step());
    GRADACC_RETURN_IF_ERROR(backend.SetParameters(client.params()));
    result.steps = step.version;
    result.last_loss = step.loss;
    samples_done +=
        geometry.Slot(t, geometry.workers - 1, geometry.micro_batches - 1).end - geometry.Slot(t, 0, 0).begin;
    if (!options.report) continue;
    progress.Stepped(step, samples_done);
    if (test != nullptr && (step.version % progress.per_epoch() == 0 || step.job_done)) {
      GRADACC_ASSIGN_OR_RETURN(result.test_accuracy,
                               EvaluateAndReport(client, backend, *test, progress, step, options.out));
    }
  }
  return result;
}

}  // namespace gradacc
