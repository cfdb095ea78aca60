#include "worker/training/worker_options.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/training/model.h"

namespace gradacc {
namespace {

absl::Status NonNegative(int64_t value, absl::string_view flag, int64_t max = std::numeric_limits<int64_t>::max()) {
  if (value < 0 || value > max) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", value, " is out of range [0, ", max, "]"));
  }
  return absl::OkStatus();
}

absl::Status Positive(double seconds, absl::string_view flag) {
  if (!(seconds > 0) || !std::isfinite(seconds)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " must be a positive number of seconds"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateWorkerOptions(const WorkerOptions& o) {
  if (o.server.empty()) return absl::InvalidArgumentError("--server=HOST:PORT is required");
  if (o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("unknown --device '", o.device, "'; known: cpu, cuda"));
  }
  if (!o.model.empty() && o.model != "mlp" && o.model != "softmax") {
    return absl::InvalidArgumentError(absl::StrCat("unknown --model '", o.model, "'; known: mlp, softmax"));
  }
  if (!o.hidden.empty()) GRADACC_RETURN_IF_ERROR(ParseModel("mlp", o.hidden, 1, 1).status());
  if (o.progress != "lines" && o.progress != "bar") {
    return absl::InvalidArgumentError("--progress must be lines or bar");
  }
  GRADACC_RETURN_IF_ERROR(ParseWireFormat(o.wire_format).status());
  constexpr int64_t kMaxU32 = std::numeric_limits<uint32_t>::max();
  GRADACC_RETURN_IF_ERROR(NonNegative(o.micro_batch, "micro_batch", kMaxU32));
  GRADACC_RETURN_IF_ERROR(NonNegative(o.accumulation_steps, "accumulation_steps", kMaxU32));
  GRADACC_RETURN_IF_ERROR(NonNegative(o.epochs, "epochs"));
  GRADACC_RETURN_IF_ERROR(NonNegative(o.steps, "steps"));
  GRADACC_RETURN_IF_ERROR(NonNegative(o.train_limit, "train_limit"));
  GRADACC_RETURN_IF_ERROR(NonNegative(o.log_every, "log_every"));
  GRADACC_RETURN_IF_ERROR(Positive(o.connect_timeout_s, "connect_timeout_s"));
  GRADACC_RETURN_IF_ERROR(Positive(o.window_timeout_s, "window_timeout_s"));
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (o.rank < -1 || o.rank > kMaxU32) return absl::InvalidArgumentError("--rank must be >= 0");
  GRADACC_RETURN_IF_ERROR(NonNegative(o.world_size, "world_size", kMaxU32));
  if (o.rank >= 0 && o.world_size > 0 && o.rank >= o.world_size) {
    return absl::InvalidArgumentError("--rank must be below --world_size");
  }
  if (o.rank >= 0 && o.hierarchical) {
    return absl::InvalidArgumentError("--rank (a worker started alone) cannot take part in --hierarchical reduction");
  }
  return absl::OkStatus();
}

absl::StatusOr<ClientOptions> ClientOptionsFor(const WorkerOptions& o, int rank) {
  ClientOptions options;
  options.server = o.server;
  options.worker = static_cast<uint32_t>(rank);
  options.connect_timeout = absl::Seconds(o.connect_timeout_s);
  options.window_timeout = absl::Seconds(o.window_timeout_s);
  options.shared_memory = o.shared_memory;
  // An elastic newcomer learns from its plan that the next window is its
  // first (training waits for it), so no rank waits inside start-up.
  options.wait_for_first_window = false;
  GRADACC_ASSIGN_OR_RETURN(options.wire_format, ParseWireFormat(o.wire_format));
  options.connection.tls_ca_file = o.tls_ca;
  options.connection.tls_cert_file = o.tls_cert;
  options.connection.tls_key_file = o.tls_key;
  GRADACC_RETURN_IF_ERROR(LoadToken(o.token_file, options.connection));
  return options;
}

TrainingOptions TrainingOptionsFor(const WorkerOptions& o, int rank) {
  TrainingOptions t;
  t.micro_batch = static_cast<uint32_t>(o.micro_batch);
  t.accumulation_steps = static_cast<uint32_t>(o.accumulation_steps);
  t.epochs = static_cast<uint64_t>(o.epochs);
  t.steps = static_cast<uint64_t>(o.steps);
  t.log_every = static_cast<uint64_t>(o.log_every);
  t.report = rank == 0;
  t.progress = o.progress;
  return t;
}

}  // namespace gradacc
