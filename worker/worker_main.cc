// gradacc-worker: one MPI rank = one worker (identity = rank). Parses flags,
// loads Fashion-MNIST, joins the server and runs the training loop.
//   mpirun -np 4 gradacc-worker --server=HOST:PORT [--epochs=3] [--device=cpu]
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "common/buffer.h"
#include "worker/client.h"
#include "worker/dataset.h"
#include "worker/group_client.h"
#include "worker/model.h"
#include "worker/mpi_scope.h"
#include "worker/training.h"

ABSL_FLAG(std::string, server, "", "gradacc server address HOST:PORT (required)");
ABSL_FLAG(std::string, model, "", "mlp or softmax; default: the job's worker hint, else mlp");
ABSL_FLAG(std::string, hidden, "", "hidden widths of the MLP, e.g. 256,128; default: the job's hint");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(std::string, data_dir, gradacc::kDefaultDataDir, "folder with the Fashion-MNIST .gz IDX files");
ABSL_FLAG(int64_t, train_limit, 0, "use only the first N training samples (0 = all)");
ABSL_FLAG(int64_t, epochs, 0, "epochs to train; must agree with the server's job (0 = whatever it says)");
ABSL_FLAG(int64_t, steps, 0, "steps to train; must agree with the server's job (0 = whatever it says)");
ABSL_FLAG(int, micro_batch, 0, "samples per micro-batch (0 = the job's micro_batch_size)");
ABSL_FLAG(int, accumulation_steps, 0, "micro-batches per window (0 = the job's micro_batches)");
ABSL_FLAG(int64_t, log_every, 0, "worker 0 prints a progress line every N steps (0 = ~20 lines)");
ABSL_FLAG(std::string, progress, "lines", "lines, or bar (a progress bar redrawn in place on a terminal)");
ABSL_FLAG(std::string, wire_format, "f32",
          "gradients through gRPC as f32, or compressed to bf16 or f16 (accumulated in f32 by the server)");
ABSL_FLAG(bool, hierarchical, false,
          "reduce among the ranks of each host first (MPI_Comm_split_type shared); only one rank per host talks "
          "to the server");
ABSL_FLAG(bool, shared_memory, true,
          "move gradients and parameters through shared memory when the server is on this host (else gRPC)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the server's certificate (enables TLS)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, token_file, "", "file holding the worker bearer token; default: $GRADACC_TOKEN");
ABSL_FLAG(double, connect_timeout_s, 30, "give up when the server is unreachable for this long");
ABSL_FLAG(double, window_timeout_s, 1800, "give up when a window does not close within this long");

namespace {

struct Setup {
  std::unique_ptr<gradacc::Client> client;  // flat: this rank's own connection
  std::unique_ptr<gradacc::TrainingClient> session;  // what training talks to
  std::unique_ptr<gradacc::Backend> backend;
  gradacc::Dataset train, test;
};

// Flags and data: local to this rank.
absl::Status PrepareLocal(int rank, Setup& s) {
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("unknown --device '", device, "'; known: cpu, cuda"));
  }
  if (device == "cuda") {
    // Fails on a build without CUDA or a machine without a GPU, before
    // anything else is done.
    auto probe = gradacc::MakeCudaBackend(gradacc::MlpShape());
    if (!probe.ok()) return probe.status();
  }
  const std::string model_flag = absl::GetFlag(FLAGS_model);
  if (!model_flag.empty() && model_flag != "mlp" && model_flag != "softmax") {
    return absl::InvalidArgumentError(absl::StrCat("unknown --model '", model_flag, "'; known: mlp, softmax"));
  }
  if (absl::GetFlag(FLAGS_server).empty()) return absl::InvalidArgumentError("--server=HOST:PORT is required");
  if (absl::GetFlag(FLAGS_progress) != "lines" && absl::GetFlag(FLAGS_progress) != "bar") {
    return absl::InvalidArgumentError("--progress must be lines or bar");
  }
  if (absl::GetFlag(FLAGS_micro_batch) < 0 || absl::GetFlag(FLAGS_accumulation_steps) < 0 ||
      absl::GetFlag(FLAGS_epochs) < 0 || absl::GetFlag(FLAGS_steps) < 0 || absl::GetFlag(FLAGS_train_limit) < 0) {
    return absl::InvalidArgumentError("--micro_batch, --accumulation_steps, --epochs, --steps and --train_limit must be >= 0");
  }

  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  auto train = gradacc::LoadFashionMnist(dir, "train", absl::GetFlag(FLAGS_train_limit));
  if (!train.ok()) return train.status();
  s.train = *std::move(train);
  if (rank == 0) {
    auto test = gradacc::LoadFashionMnist(dir, "t10k");
    if (!test.ok()) return test.status();
    s.test = *std::move(test);
  }
  return absl::OkStatus();
}

// The connection (collective with --hierarchical), the model and the
// geometry.
absl::Status Connect(int rank, int size, Setup& s) {
  const std::string device = absl::GetFlag(FLAGS_device);
  const std::string model_flag = absl::GetFlag(FLAGS_model);
  gradacc::ClientOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  options.worker = static_cast<uint32_t>(rank);
  options.connect_timeout = absl::Seconds(absl::GetFlag(FLAGS_connect_timeout_s));
  options.shared_memory = absl::GetFlag(FLAGS_shared_memory);
  auto wire = gradacc::ParseWireFormat(absl::GetFlag(FLAGS_wire_format));
  if (!wire.ok()) return wire.status();
  options.wire_format = *wire;
  options.window_timeout = absl::Seconds(absl::GetFlag(FLAGS_window_timeout_s));
  options.connection.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.connection.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.connection.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  if (absl::Status t = gradacc::LoadToken(absl::GetFlag(FLAGS_token_file), options.connection); !t.ok()) return t;
  if (absl::GetFlag(FLAGS_hierarchical)) {
    auto group = gradacc::GroupClient::Connect(options);
    if (!group.ok()) return group.status();
    s.session = *std::move(group);
  } else {
    auto client = gradacc::Client::Connect(options);
    if (!client.ok()) return client.status();
    s.client = *std::move(client);
    s.session = std::make_unique<gradacc::ClientAdapter>(*s.client);
  }
  const gradacc::v1::JobSpec& job = s.session->job();
  if (static_cast<uint32_t>(size) != job.window().num_workers()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "the server's job '%s' expects %d workers but mpirun started %d ranks; use mpirun -np %d",
        job.job_id(), job.window().num_workers(), size, job.window().num_workers()));
  }
  auto hint = [&](const char* key, const std::string& fallback) {
    auto it = job.worker_hints().find(key);
    return it == job.worker_hints().end() ? fallback : it->second;
  };
  const std::string model = model_flag.empty() ? hint("model", "mlp") : model_flag;
  const std::string hidden = absl::GetFlag(FLAGS_hidden).empty() ? hint("hidden", "") : absl::GetFlag(FLAGS_hidden);
  auto shape = gradacc::ParseModel(model, hidden, s.train.features(), 10);
  if (!shape.ok()) return shape.status();
  if (absl::Status m = gradacc::CheckModelMatchesJob(*shape, job); !m.ok()) return m;
  auto backend = gradacc::MakeBackend(device, *shape);
  if (!backend.ok()) return backend.status();
  s.backend = *std::move(backend);
  gradacc::TrainingOptions t;
  t.micro_batch = absl::GetFlag(FLAGS_micro_batch);
  t.accumulation_steps = absl::GetFlag(FLAGS_accumulation_steps);
  t.epochs = absl::GetFlag(FLAGS_epochs);
  t.steps = absl::GetFlag(FLAGS_steps);
  return gradacc::GeometryFor(job, s.train, t).status();
}

}  // namespace

int main(int argc, char** argv) {
  gradacc::KeepFreedMemoryForReuse();
  gradacc::MpiScope mpi(&argc, &argv);
  absl::SetProgramUsageMessage("mpirun -np N gradacc-worker --server=HOST:PORT [--epochs=E] [--device=cpu|cuda]");
  absl::ParseCommandLine(argc, argv);
  const int rank = mpi.rank();

  Setup setup;
  absl::Status ready = PrepareLocal(rank, setup);
  // Every rank learns whether all are ready, so none is left waiting for a
  // window (or a collective connect) that a failed rank will never reach.
  if (mpi.AllOk(ready.ok())) ready = Connect(rank, mpi.size(), setup);
  if (!mpi.AllOk(ready.ok())) {
    if (!ready.ok()) absl::FPrintF(stderr, "gradacc-worker[%d]: %s\n", rank, ready.message());
    else if (rank == 0) absl::FPrintF(stderr, "gradacc-worker[0]: another rank failed to start; stopping\n");
    return 2;
  }

  gradacc::TrainingOptions options;
  options.micro_batch = absl::GetFlag(FLAGS_micro_batch);
  options.accumulation_steps = absl::GetFlag(FLAGS_accumulation_steps);
  options.epochs = absl::GetFlag(FLAGS_epochs);
  options.steps = absl::GetFlag(FLAGS_steps);
  options.log_every = absl::GetFlag(FLAGS_log_every);
  options.report = rank == 0;
  options.progress = absl::GetFlag(FLAGS_progress);
  auto result = gradacc::RunTraining(*setup.session, *setup.backend, setup.train, rank == 0 ? &setup.test : nullptr,
                                     options);
  if (!result.ok()) {
    absl::FPrintF(stderr, "gradacc-worker[%d]: %s\n", rank, result.status().ToString());
    return 1;
  }
  (void)setup.session->Leave();
  if (rank == 0) {
    auto status = setup.session->GetStatus();
    absl::PrintF("final test accuracy: %.2f%% after %d steps\n", 100 * result->test_accuracy, result->steps);
    if (status.ok() && !status->final_params_path().empty()) {
      absl::PrintF("final parameters: %s%s\n", status->final_params_path(),
                   status->final_params_written() ? "" : " (not written yet)");
    } else {
      absl::PrintF("final parameters: not written (start gradacc-server with --output=FILE.safetensors)\n");
    }
  }
  mpi.Barrier();
  return 0;
}
