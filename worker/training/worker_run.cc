#include "worker/training/worker_run.h"

#include <algorithm>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/data_plan.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "worker/training/group_client.h"
#include "worker/training/model.h"
#include "worker/training/training.h"

namespace gradacc {
namespace {

struct Setup {
  ClientOptions client_options;
  std::unique_ptr<Client> client;           // flat: this rank's own connection
  std::unique_ptr<TrainingClient> session;  // what training talks to
  std::unique_ptr<Backend> backend;
  Dataset train, test;
};

// Options, token and data: local to this rank.
absl::Status PrepareLocal(const WorkerOptions& options, int rank, Setup& s) {
  GRADACC_RETURN_IF_ERROR(ValidateWorkerOptions(options));
  GRADACC_ASSIGN_OR_RETURN(s.client_options, ClientOptionsFor(options, rank));
  if (options.device == "cuda") {
    // Fails on a build without CUDA or a machine without a GPU, before
    // anything else is done.
    GRADACC_RETURN_IF_ERROR(MakeCudaBackend(MlpShape()).status());
  }
  GRADACC_ASSIGN_OR_RETURN(s.train, LoadFashionMnist(options.data_dir, "train", options.train_limit));
  if (rank == 0) {
    GRADACC_ASSIGN_OR_RETURN(s.test, LoadFashionMnist(options.data_dir, "t10k"));
  }
  return absl::OkStatus();
}

// The model the worker computes: the flags', else the job's hints.
absl::StatusOr<MlpShape> ModelFor(const WorkerOptions& options, const v1::JobSpec& job, uint32_t features) {
  auto hint = [&](const char* key, const std::string& fallback) {
    auto it = job.worker_hints().find(key);
    return it == job.worker_hints().end() ? fallback : it->second;
  };
  const std::string model = options.model.empty() ? hint("model", "mlp") : options.model;
  const std::string hidden = options.hidden.empty() ? hint("hidden", "") : options.hidden;
  GRADACC_ASSIGN_OR_RETURN(MlpShape shape, ParseModel(model, hidden, features, 10));
  GRADACC_RETURN_IF_ERROR(CheckModelMatchesJob(shape, job));
  return shape;
}

// The connection (collective with --hierarchical), the model and the
// geometry.
absl::Status Connect(const WorkerOptions& options, int rank, int size, Setup& s) {
  if (options.hierarchical) {
    GRADACC_ASSIGN_OR_RETURN(s.session, GroupClient::Connect(s.client_options));
  } else {
    GRADACC_ASSIGN_OR_RETURN(s.client, Client::Connect(s.client_options));
    s.session = std::make_unique<ClientAdapter>(*s.client);
  }
  const v1::JobSpec& job = s.session->job();
  if (job.has_loss_scaling()) {
    // Its gradients would be taken for scaled ones and divided by the scale.
    return absl::FailedPreconditionError(absl::StrFormat(
        "the server's job '%s' uses fp16 loss scaling (loss_scaling); gradacc-worker's built-in MLP computes in "
        "float32 without scaling its loss: serve it a job without loss_scaling",
        job.job_id()));
  }
  if (HasDataPlan(job)) {
    // Elastic: any number of ranks up to max_workers, worker ids below it.
    if (static_cast<uint32_t>(std::max(size, rank + 1)) > job.window().max_workers()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "the server's job '%s' takes worker ids below %d; worker %d of %d is out of range", job.job_id(),
          job.window().max_workers(), rank, size));
    }
  } else if (static_cast<uint32_t>(size) != job.window().num_workers()) {
    return absl::FailedPreconditionError(
        options.rank >= 0
            ? absl::StrFormat("the server's job '%s' has %d workers; start the replacement with --world_size=%d",
                              job.job_id(), job.window().num_workers(), job.window().num_workers())
            : absl::StrFormat("the server's job '%s' expects %d workers but mpirun started %d ranks; use mpirun -np %d",
                              job.job_id(), job.window().num_workers(), size, job.window().num_workers()));
  }
  GRADACC_ASSIGN_OR_RETURN(MlpShape shape, ModelFor(options, job, s.train.features()));
  GRADACC_ASSIGN_OR_RETURN(s.backend, MakeBackend(options.device, shape));
  return GeometryFor(job, s.train, TrainingOptionsFor(options, rank)).status();
}

void ReportResult(TrainingClient& session, const TrainingResult& result) {
  auto status = session.GetStatus();
  absl::PrintF("final test accuracy: %.2f%% after %d steps\n", 100 * result.test_accuracy, result.steps);
  if (status.ok() && !status->final_params_path().empty()) {
    absl::PrintF("final parameters: %s%s\n", status->final_params_path(),
                 status->final_params_written() ? "" : " (not written yet)");
  } else {
    absl::PrintF("final parameters: not written (start gradacc-server with --output=FILE.safetensors)\n");
  }
}

}  // namespace

int RunWorker(const WorkerOptions& options, const MpiScope& mpi) {
  SetLogProgram("gradacc-worker");
  // A replacement started alone (--rank) is its own world of one.
  if (options.rank >= 0 && mpi.size() > 1) {
    GRADACC_LOG(ERROR, "--rank is for a worker started alone, not under mpirun -np %d", mpi.size());
    return 2;
  }
  const int rank = options.rank >= 0 ? static_cast<int>(options.rank) : mpi.rank();
  SetLogProgram(absl::StrCat("gradacc-worker[", rank, "]"));  // every line says which rank
  const int size = options.world_size > 0 ? static_cast<int>(options.world_size) : std::max(mpi.size(), rank + 1);
  Setup setup;
  absl::Status ready = PrepareLocal(options, rank, setup);
  // Every rank learns whether all are ready, so none is left waiting for a
  // window (or a collective connect) that a failed rank will never reach.
  // This is the last use of MPI (without --hierarchical): from here on a
  // lost rank is the server's business (QUORUM, elastic membership), and
  // the others finish without waiting for it.
  if (mpi.AllOk(ready.ok())) ready = Connect(options, rank, size, setup);
  if (!mpi.AllOk(ready.ok())) {
    if (!ready.ok()) {
      GRADACC_LOG(ERROR, "%s", ready.message());
    } else if (rank == 0) {
      GRADACC_LOG(ERROR, "another rank failed to start; stopping");
    }
    return 2;
  }
  auto result = RunTraining(*setup.session, *setup.backend, setup.train, rank == 0 ? &setup.test : nullptr,
                            TrainingOptionsFor(options, rank));
  if (!result.ok()) {
    GRADACC_LOG(ERROR, "%s", result.status().ToString());
    return 1;
  }
  (void)setup.session->Leave();
  if (rank == 0) ReportResult(*setup.session, *result);
  // No final barrier: every rank is done when the server says the job is,
  // and a barrier would wait forever for a rank that was lost.
  return 0;
}

}  // namespace gradacc
