// The options of gradacc-worker, as its flags give them, and the checks made
// before anything is loaded or connected. Kept out of worker_main.cc so that
// tests check the rules in-process (tests/worker/worker_options_test.cc).
// Plain values and free functions; thread-safe.
#ifndef GRADACC_WORKER_TRAINING_WORKER_OPTIONS_H_
#define GRADACC_WORKER_TRAINING_WORKER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/client/client.h"
#include "worker/training/dataset.h"
#include "worker/training/training.h"

namespace gradacc {

struct WorkerOptions {
  std::string server;          // HOST:PORT (every shard's, comma-separated); required
  std::string model;           // "mlp" or "softmax"; empty = the job's hint, else mlp
  std::string hidden;          // MLP hidden widths "256,128"; empty = the job's hint
  std::string device = "cpu";  // cpu or cuda
  std::string data_dir = kDefaultDataDir;
  int64_t train_limit = 0;          // first N training samples; 0 = all
  int64_t epochs = 0;               // must agree with the job; 0 = the job's
  int64_t steps = 0;                // must agree with the job; 0 = the job's
  int64_t micro_batch = 0;          // 0 = the job's micro_batch_size
  int64_t accumulation_steps = 0;   // 0 = the job's micro_batches
  int64_t log_every = 0;            // 0 = about 20 progress lines
  std::string progress = "lines";   // lines or bar
  std::string wire_format = "f32";  // f32, bf16 or f16
  bool hierarchical = false;
  bool shared_memory = true;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  std::string token_file;  // empty: $GRADACC_TOKEN
  double connect_timeout_s = 30;
  double window_timeout_s = 1800;
  // A worker started alone (a replacement for a lost rank): its worker id
  // and the job's world size, instead of MPI's (-1 / 0: MPI's).
  int64_t rank = -1;
  int64_t world_size = 0;
};

// OK when the options make sense on their own (the job's agreement is
// checked after joining); otherwise an InvalidArgument naming the flag.
absl::Status ValidateWorkerOptions(const WorkerOptions& options);

// The client library's options for rank `rank`; loads the token (an error
// that does not show it when it cannot be sent).
absl::StatusOr<ClientOptions> ClientOptionsFor(const WorkerOptions& options, int rank);

// The training loop's options for rank `rank` (rank 0 reports).
TrainingOptions TrainingOptionsFor(const WorkerOptions& options, int rank);

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_WORKER_OPTIONS_H_
