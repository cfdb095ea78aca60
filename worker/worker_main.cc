// gradacc-worker: one MPI rank = one worker (identity = rank). Parses flags
// and hands them to RunWorker (worker/training/worker_run.h).
//   mpirun -np 4 gradacc-worker --server=HOST:PORT [--epochs=3] [--device=cpu]
//   gradacc-worker --rank=2 --world_size=4 --server=HOST:PORT   (a replacement, alone)
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/buffer.h"
#include "common/mutex.h"
#include "common/usage.h"
#include "worker/training/mpi_scope.h"
#include "worker/training/worker_options.h"
#include "worker/training/worker_run.h"

ABSL_FLAG(std::string, server, "",
          "gradacc server address HOST:PORT (required; a sharded job: every shard's, in order)");
ABSL_FLAG(std::string, model, "", "mlp or softmax; default: the job's worker hint, else mlp");
ABSL_FLAG(std::string, hidden, "", "hidden widths of the MLP, e.g. 256,128; default: the job's hint");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(std::string, data_dir, gradacc::kDefaultDataDir, "folder with the Fashion-MNIST .gz IDX files");
ABSL_FLAG(int64_t, train_limit, 0, "use only the first N training samples (0 = all)");
ABSL_FLAG(int64_t, epochs, 0, "epochs to train; must agree with the server's job (0 = whatever it says)");
ABSL_FLAG(int64_t, steps, 0, "steps to train; must agree with the server's job (0 = whatever it says)");
ABSL_FLAG(int64_t, micro_batch, 0, "samples per micro-batch (0 = the job's micro_batch_size)");
ABSL_FLAG(int64_t, accumulation_steps, 0, "micro-batches per window (0 = the job's micro_batches)");
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
ABSL_FLAG(int64_t, rank, -1,
          "a worker started alone (no mpirun), e.g. the replacement of a lost rank: its worker id (-1 = the MPI "
          "rank)");
ABSL_FLAG(int64_t, world_size, 0, "with --rank: the job's number of ranks (0 = the server's num_workers check is "
          "made against --rank + 1)");

namespace {

constexpr char kUsage[] =
    "gradacc-worker: one MPI rank trains as one worker of a gradacc job (Fashion-MNIST, built-in MLP).\n"
    "  mpirun -np N gradacc-worker --server=HOST:PORT [--epochs=E] [--device=cpu|cuda]\n"
    "A lost rank survives under `mpirun --enable-recovery` (QUORUM or elastic jobs); its replacement is started\n"
    "alone: gradacc-worker --rank=R --world_size=N --server=HOST:PORT [same flags]";

gradacc::WorkerOptions OptionsFromFlags() {
  gradacc::WorkerOptions o;
  o.server = absl::GetFlag(FLAGS_server);
  o.model = absl::GetFlag(FLAGS_model);
  o.hidden = absl::GetFlag(FLAGS_hidden);
  o.device = absl::GetFlag(FLAGS_device);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.train_limit = absl::GetFlag(FLAGS_train_limit);
  o.epochs = absl::GetFlag(FLAGS_epochs);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.micro_batch = absl::GetFlag(FLAGS_micro_batch);
  o.accumulation_steps = absl::GetFlag(FLAGS_accumulation_steps);
  o.log_every = absl::GetFlag(FLAGS_log_every);
  o.progress = absl::GetFlag(FLAGS_progress);
  o.wire_format = absl::GetFlag(FLAGS_wire_format);
  o.hierarchical = absl::GetFlag(FLAGS_hierarchical);
  o.shared_memory = absl::GetFlag(FLAGS_shared_memory);
  o.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.token_file = absl::GetFlag(FLAGS_token_file);
  o.connect_timeout_s = absl::GetFlag(FLAGS_connect_timeout_s);
  o.window_timeout_s = absl::GetFlag(FLAGS_window_timeout_s);
  o.rank = absl::GetFlag(FLAGS_rank);
  o.world_size = absl::GetFlag(FLAGS_world_size);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  gradacc::InitUsage(kUsage);
  // Before MPI: help needs no MPI world.
  if (gradacc::HelpRequested(argc, argv)) {
    std::fputs(gradacc::FlagsHelp(kUsage).c_str(), stdout);
    return 0;
  }
  gradacc::KeepFreedMemoryForReuse();
  gradacc::SkipMutexDeadlockDetectionInOptimizedBuilds();
  gradacc::MpiScope mpi(&argc, &argv);
  absl::ParseCommandLine(argc, argv);
  return mpi.Finish(gradacc::RunWorker(OptionsFromFlags(), mpi));
}
