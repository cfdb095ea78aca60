#include "worker/training.h"

#include <unistd.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
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

absl::StatusOr<double> Evaluate(Backend& backend, const Dataset& test) {
  std::vector<uint32_t> all(test.size);
  for (uint32_t i = 0; i < test.size; ++i) all[i] = i;
  std::vector<float> x(test.size * test.features());
  std::vector<uint8_t> y(test.size);
  test.Gather(all, x.data(), y.data());
  GRADACC_ASSIGN_OR_RETURN(uint64_t correct, backend.CountCorrect(x.data(), y.data(), test.size));
  return static_cast<double>(correct) / static_cast<double>(test.size);
}

absl::StatusOr<TrainingResult> RunTraining(TrainingClient& client, Backend& backend, const Dataset& train,
                                           const Dataset* test, const TrainingOptions& options) {
  const v1::JobSpec& job = client.job();
  GRADACC_ASSIGN_OR_RETURN(WindowGeometry geometry, GeometryFor(job, train, options));
  const uint64_t total = job.total_steps();
  const uint64_t per_epoch = geometry.windows_per_epoch();
  const uint64_t epochs = (total + per_epoch - 1) / per_epoch;
  const uint64_t log_every = options.log_every ? options.log_every : std::max<uint64_t>(1, total / 20);
  const uint32_t rank = client.worker();

  std::vector<float> x(uint64_t{geometry.micro_batch} * train.features() + 1);
  std::vector<uint8_t> y(geometry.micro_batch + 1);
  std::vector<uint32_t> perm;
  uint64_t perm_epoch = ~uint64_t{0};
  TrainingResult result;
  GRADACC_RETURN_IF_ERROR(backend.SetParameters(client.params()));

  const uint64_t first = client.version();
  const bool bar = options.progress == "bar" && isatty(fileno(options.out));
  const absl::Time start = absl::Now();
  uint64_t samples_done = 0;
  if (options.report) {
    absl::FPrintF(options.out,
                  "training job '%s' on %s: %d workers x %d micro-batches of %d = %d samples/step, %d steps/epoch, "
                  "%d steps (%d epochs) from step %d\n",
                  job.job_id(), backend.name(), geometry.workers, geometry.micro_batches, geometry.micro_batch,
                  geometry.window_samples(), per_epoch, total, epochs, first);
    absl::FPrintF(options.out, "worker 0 moves data through %s\n", client.transport());
    std::fflush(options.out);
  }
  while (!client.done()) {
    const uint64_t t = client.version();
    const uint64_t epoch = t / per_epoch;
    if (epoch != perm_epoch) {
      perm = EpochPermutation(job.seed(), epoch, static_cast<uint32_t>(train.size));
      perm_epoch = epoch;
    }
    for (uint32_t k = 0; k < geometry.micro_batches; ++k) {
      const WindowGeometry::Range r = geometry.Slot(t, rank, k);
      const uint32_t n = static_cast<uint32_t>(r.end - r.begin);
      double loss = 0;
      if (n > 0) {
        train.Gather(absl::MakeConstSpan(perm.data() + r.begin, n), x.data(), y.data());
        GRADACC_ASSIGN_OR_RETURN(loss, backend.AccumulateGradients(x.data(), y.data(), n, client.grad()));
      }
      client.AddMicroBatch(n, loss);
    }
    GRADACC_ASSIGN_OR_RETURN(StepResult step, client.Step());
    GRADACC_RETURN_IF_ERROR(backend.SetParameters(client.params()));
    result.steps = step.version;
    result.last_loss = step.loss;
    const WindowGeometry::Range whole{geometry.Slot(t, 0, 0).begin,
                                      geometry.Slot(t, geometry.workers - 1, geometry.micro_batches - 1).end};
    samples_done += whole.end - whole.begin;
    if (!options.report) continue;

    const uint64_t done = step.version;
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
    if (bar) {
      const double rate = elapsed > 0 ? static_cast<double>(samples_done) / elapsed : 0;
      const double eta = done > first ? elapsed / static_cast<double>(done - first) * static_cast<double>(total - done) : 0;
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(kWidth * done / std::max<uint64_t>(1, total));
      absl::FPrintF(options.out, "\r[%s%s] %3.0f%% step %d/%d epoch %d/%d loss %.4f %.0f samples/s ETA %s  ",
                    std::string(filled, '#'), std::string(kWidth - filled, '.'), 100.0 * done / total, done, total,
                    std::min<uint64_t>(done == 0 ? 1 : (done - 1) / per_epoch + 1, epochs), epochs, step.loss, rate,
                    Clock(eta));
      if (step.job_done) absl::FPrintF(options.out, "\n");
      std::fflush(options.out);
    } else if (done % log_every == 0 || step.job_done || done == first + 1) {
      const double rate = elapsed > 0 ? static_cast<double>(samples_done) / elapsed : 0;
      const double eta = done > first ? elapsed / static_cast<double>(done - first) * static_cast<double>(total - done) : 0;
      absl::FPrintF(options.out, "step %*d/%d | epoch %d/%d | loss %.4f | %.0f samples/s | ETA %s\n",
                    static_cast<int>(absl::StrCat(total).size()), done, total,
                    std::min<uint64_t>(done == 0 ? 1 : (done - 1) / per_epoch + 1, epochs), epochs, step.loss, rate,
                    Clock(eta));
      std::fflush(options.out);
    }
    if (test != nullptr && (done % per_epoch == 0 || step.job_done)) {
      GRADACC_ASSIGN_OR_RETURN(double acc, Evaluate(backend, *test));
      result.test_accuracy = acc;
      absl::FPrintF(options.out, "%s%s %d (step %d): test accuracy %.2f%%\n", bar && !step.job_done ? "\n" : "",
                    done % per_epoch == 0 ? "epoch" : "after epoch fraction",
                    done % per_epoch == 0 ? done / per_epoch : done / per_epoch + 1, done, 100 * acc);
      std::fflush(options.out);
      absl::Status reported = client.ReportTestAccuracy(acc, done);
      if (!reported.ok()) absl::FPrintF(stderr, "gradacc-worker: %s\n", reported.ToString());
    }
  }
  return result;
}

}  // namespace gradacc
