#include "server/server_config.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "common/data_plan.h"
#include "common/files.h"
#include "common/http_server.h"
#include "common/job_spec.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "google/protobuf/text_format.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "host:port to serve on; port 0 picks a free port");
ABSL_FLAG(std::string, port_file, "", "write the bound port to this file once serving");
ABSL_FLAG(std::string, job, "", "job spec file (protobuf text format, or JSON when it ends in .json); "
          "empty = the built-in Fashion-MNIST MLP job");
ABSL_FLAG(std::string, job_id, "", "override job_id");
ABSL_FLAG(int, workers, 0, "override window.num_workers");
ABSL_FLAG(int, micro_batches, 0, "override window.micro_batches (per worker per window)");
ABSL_FLAG(int, micro_batch_size, 0, "override window.micro_batch_size");
ABSL_FLAG(int64_t, total_steps, 0, "override total_steps");
ABSL_FLAG(int64_t, epochs, 0, "set total_steps to this many epochs of worker_hints[\"train_samples\"]");
ABSL_FLAG(int, max_workers, 0, "override window.max_workers (> 0: elastic membership, worker ids below it)");
ABSL_FLAG(int, min_workers, 0, "override window.min_workers (elastic: fewest contributions to close a window)");
ABSL_FLAG(bool, data_plan, false,
          "elastic gradacc-worker jobs: the server plans each window's samples (JobSpec.data_plan) so every "
          "sample of an epoch is used once whatever the membership; needs --epochs (and max_workers, default "
          "num_workers)");
ABSL_FLAG(double, lr, 0, "override optimizer.lr");
ABSL_FLAG(int64_t, seed, -1, "override seed");
ABSL_FLAG(std::string, output, "", "write the final parameters here (safetensors) when the job is done");
ABSL_FLAG(bool, check_job, false, "load and check the job spec, print a summary, and exit");
ABSL_FLAG(std::string, dump_job, "", "write the effective job spec (text format) to this file");
ABSL_FLAG(int, max_pull_wait_s, 1800, "a parked pull waits at most this long");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate (chain) of the server; enables TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA: require client certificates signed by it (mutual TLS)");
ABSL_FLAG(std::string, worker_token_file, "",
          "file holding the worker bearer token (join, push, pull); default: $GRADACC_WORKER_TOKEN");
ABSL_FLAG(std::string, reader_token_file, "",
          "file holding the read-only bearer token (status, ledger); default: $GRADACC_READER_TOKEN");
ABSL_FLAG(std::string, shard_token_file, "",
          "file holding the bearer token sharded servers present to each other (accepted only for the norm "
          "exchange and per-shard status; required on sharded servers with tokens); default: $GRADACC_SHARD_TOKEN");
ABSL_FLAG(bool, allow_remote_plaintext, false,
          "without TLS, still serve (gRPC and /metrics) and dial shards on non-loopback addresses (trusted "
          "networks only)");
ABSL_FLAG(std::vector<std::string>, shard, {"0"},
          "this server's shard (0-based) of a sharded job; a list (0,4,8) serves those shards in this one process "
          "on one port (each with its own state and files: checkpoint_dir/shard-<i>, ledger and output files with "
          "a .shard-<i> suffix), so that a worker reaches all of them over one connection");
ABSL_FLAG(int, num_shards, 1, "shards the parameters are split over (each owns a contiguous flat range)");
ABSL_FLAG(std::vector<std::string>, shard_peers, {},
          "every shard's HOST:PORT in shard order, this one included (sharded jobs); with --tls_cert the shards "
          "dial each other over TLS, presenting --tls_cert/--tls_key as client certificate");
ABSL_FLAG(std::string, shard_tls_ca, "",
          "PEM CA that signed the other shards' certificates (sharded jobs with TLS; default: --tls_client_ca)");
ABSL_FLAG(std::string, metrics_listen, "",
          "HOST:PORT to serve Prometheus /metrics on (port 0: a free one); HTTPS with --tls_cert/--tls_key, and "
          "with tokens only for the reader or worker token (Authorization: Bearer)");
ABSL_FLAG(std::string, metrics_port_file, "", "write the metrics port to this file once serving");
ABSL_FLAG(std::string, shared_memory_dir, "/dev/shm",
          "tmpfs folder for the shared-memory segments of workers on this host; empty = gRPC only");
ABSL_FLAG(bool, shm_fast_path, true,
          "offer workers on this host the shared-memory fast path: a shared-memory window's push and pull through "
          "a mailbox and futex wake-ups instead of gRPC round trips (docs/protocol.md)");
ABSL_FLAG(std::string, ledger_file, "",
          "append the step ledger here (JSON lines); default: <checkpoint_dir>/ledger.jsonl with checkpoints");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "resume from the newest valid checkpoint here and write checkpoints into it; a version is published "
          "only once its checkpoint is written (failures stop publishing and are retried)");
ABSL_FLAG(int64_t, checkpoint_every, 1,
          "checkpoint every N steps (1 = every broadcast version is durable before workers see it)");
ABSL_FLAG(int, keep_checkpoints, 3, "checkpoints to keep");
ABSL_FLAG(double, push_timeout_s, 120, "refuse (PUSH_TIMEOUT) a push stream not complete after this long");
ABSL_FLAG(double, staging_mb, 32,
          "gradient chunks (MiB, per shard) that may wait for their turn in the running sum while earlier workers' "
          "pushes arrive; when full, streams further down the worker order are paused (gRPC flow control)");
ABSL_FLAG(bool, running_sum, true,
          "add gRPC pushes into the window's sum as their chunks arrive, in worker order (false: each push into a "
          "model-sized buffer of its own, summed when the window closes; the same bits either way)");
ABSL_FLAG(std::string, grpc_bdp_probe, "auto",
          "let gRPC grow the server's receive windows by bandwidth-delay-product probing: true, false, or auto (the "
          "default: off when --listen is a loopback address, on otherwise). Across hosts it is what fills the "
          "links; on loopback it grows every stream's window to tens of MB, and a push stream paused for its turn "
          "in the running sum holds its window in server memory, so the server's memory grows with the number of "
          "gRPC workers");
ABSL_FLAG(int, grpc_stream_window_kb, 1024,
          "the server's receive window per push stream when it does not probe: what a push stream paused for its "
          "turn may hold in server memory (probing grows it from there)");
ABSL_FLAG(double, stall_ms, 1000,
          "a paused push whose turn made no progress this long (an earlier worker does not push) stops waiting "
          "and takes a model-sized buffer of its own");
ABSL_FLAG(double, worker_timeout_s, 60, "a worker silent this long (no call, no parked pull) is shown as lost");
ABSL_FLAG(int, straggler_windows, 2,
          "report a worker as a straggler (status, /metrics, ledger) once it is missing from this many closed "
          "windows in a row (QUORUM closes windows without it); 0 = never");
ABSL_FLAG(std::string, policy, "", "override window.policy: wait or quorum");
ABSL_FLAG(int, quorum, 0, "override window.quorum (QUORUM: contributions needed at the deadline)");
ABSL_FLAG(int64_t, deadline_ms, 0, "override window.deadline_ms (QUORUM: from window open)");
ABSL_FLAG(std::vector<std::string>, kill_at, {},
          "fault injection for tests: push:W:N, mid_broadcast:W, after_publish:W, before_checkpoint:W, "
          "mid_checkpoint:W, after_checkpoint:W (SIGKILL there)");

namespace gradacc {
namespace {

// --data_plan: N from worker_hints["train_samples"], the job done after
// `epochs` epochs; total_steps the most windows that can take.
absl::Status SetDataPlan(v1::JobSpec& spec, int64_t epochs) {
  if (epochs <= 0) return absl::InvalidArgumentError("--data_plan needs --epochs");
  if (absl::GetFlag(FLAGS_total_steps) > 0) {
    return absl::InvalidArgumentError("--data_plan and --total_steps exclude each other");
  }
  auto it = spec.worker_hints().find("train_samples");
  uint64_t samples = 0;
  if (it == spec.worker_hints().end() || !absl::SimpleAtoi(it->second, &samples) || samples == 0) {
    return absl::FailedPreconditionError("--data_plan needs the job's worker_hints[\"train_samples\"]");
  }
  v1::WindowRule* w = spec.mutable_window();
  if (w->max_workers() == 0) w->set_max_workers(std::max(1u, w->num_workers()));
  spec.mutable_data_plan()->set_samples(samples);
  spec.mutable_data_plan()->set_epochs(static_cast<uint64_t>(epochs));
  spec.set_total_steps(MaxPlannedWindows(samples, epochs, w->micro_batches(), w->micro_batch_size()));
  return absl::OkStatus();
}

absl::Status ApplyOverrides(v1::JobSpec& spec) {
  if (!absl::GetFlag(FLAGS_job_id).empty()) spec.set_job_id(absl::GetFlag(FLAGS_job_id));
  v1::WindowRule* w = spec.mutable_window();
  if (absl::GetFlag(FLAGS_workers) > 0) w->set_num_workers(absl::GetFlag(FLAGS_workers));
  if (absl::GetFlag(FLAGS_micro_batches) > 0) w->set_micro_batches(absl::GetFlag(FLAGS_micro_batches));
  if (absl::GetFlag(FLAGS_micro_batch_size) > 0) w->set_micro_batch_size(absl::GetFlag(FLAGS_micro_batch_size));
  if (absl::GetFlag(FLAGS_max_workers) > 0) w->set_max_workers(absl::GetFlag(FLAGS_max_workers));
  if (absl::GetFlag(FLAGS_min_workers) > 0) w->set_min_workers(absl::GetFlag(FLAGS_min_workers));
  if (absl::GetFlag(FLAGS_total_steps) > 0) spec.set_total_steps(absl::GetFlag(FLAGS_total_steps));
  if (absl::GetFlag(FLAGS_data_plan)) {
    GRADACC_RETURN_IF_ERROR(SetDataPlan(spec, absl::GetFlag(FLAGS_epochs)));
  } else if (absl::GetFlag(FLAGS_epochs) > 0) {
    if (absl::GetFlag(FLAGS_total_steps) > 0) {
      return absl::InvalidArgumentError("--epochs and --total_steps exclude each other");
    }
    GRADACC_ASSIGN_OR_RETURN(uint64_t per_epoch, StepsPerEpoch(spec));
    spec.set_total_steps(absl::GetFlag(FLAGS_epochs) * per_epoch);
  }
  if (absl::GetFlag(FLAGS_lr) > 0) spec.mutable_optimizer()->set_lr(absl::GetFlag(FLAGS_lr));
  if (absl::GetFlag(FLAGS_seed) >= 0) spec.set_seed(absl::GetFlag(FLAGS_seed));
  const std::string policy = absl::GetFlag(FLAGS_policy);
  if (policy == "quorum") {
    w->set_policy(v1::WindowRule::POLICY_QUORUM);
  } else if (policy == "wait") {
    w->set_policy(v1::WindowRule::POLICY_WAIT);
  } else if (!policy.empty()) {
    return absl::InvalidArgumentError("--policy must be wait or quorum");
  }
  if (absl::GetFlag(FLAGS_quorum) > 0) w->set_quorum(absl::GetFlag(FLAGS_quorum));
  if (absl::GetFlag(FLAGS_deadline_ms) > 0) w->set_deadline_ms(absl::GetFlag(FLAGS_deadline_ms));
  return NormalizeJobSpec(spec);
}

absl::StatusOr<std::vector<uint32_t>> ShardsFromFlag() {
  std::vector<uint32_t> shards;
  for (const std::string& text : absl::GetFlag(FLAGS_shard)) {
    uint32_t shard = 0;
    if (!absl::SimpleAtoi(text, &shard)) {
      return absl::InvalidArgumentError(absl::StrCat("bad --shard '", text, "': shard numbers (0-based), e.g. 0,4,8"));
    }
    shards.push_back(shard);
  }
  if (shards.empty()) return absl::InvalidArgumentError("--shard is empty");
  return shards;
}

absl::StatusOr<TrainerOptions> TrainerFromFlags() {
  TrainerOptions t;
  t.final_params_path = absl::GetFlag(FLAGS_output);
  t.max_pull_wait = absl::Seconds(absl::GetFlag(FLAGS_max_pull_wait_s));
  t.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  t.checkpoint_every = std::max<int64_t>(1, absl::GetFlag(FLAGS_checkpoint_every));
  t.keep_checkpoints = std::max(1, absl::GetFlag(FLAGS_keep_checkpoints));
  t.push_timeout = absl::Seconds(absl::GetFlag(FLAGS_push_timeout_s));
  t.worker_timeout = absl::Seconds(absl::GetFlag(FLAGS_worker_timeout_s));
  if (!(absl::GetFlag(FLAGS_staging_mb) >= 0) || !(absl::GetFlag(FLAGS_stall_ms) >= 0)) {
    return absl::InvalidArgumentError("--staging_mb and --stall_ms must be >= 0");
  }
  t.accumulator.staging_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_staging_mb) * (1 << 20));
  t.accumulator.stall_limit = absl::Milliseconds(absl::GetFlag(FLAGS_stall_ms));
  t.accumulator.streaming = absl::GetFlag(FLAGS_running_sum);
  if (absl::GetFlag(FLAGS_straggler_windows) < 0) return absl::InvalidArgumentError("--straggler_windows must be >= 0");
  t.straggler_windows = static_cast<uint32_t>(absl::GetFlag(FLAGS_straggler_windows));
  t.kill_at = absl::GetFlag(FLAGS_kill_at);
  if (absl::GetFlag(FLAGS_num_shards) < 1) return absl::InvalidArgumentError("bad --num_shards");
  t.num_shards = absl::GetFlag(FLAGS_num_shards);
  t.ledger_path = absl::GetFlag(FLAGS_ledger_file);
  t.shared_memory_dir = absl::GetFlag(FLAGS_shared_memory_dir);
  t.shm_fast_path = absl::GetFlag(FLAGS_shm_fast_path);
  if (t.ledger_path.empty() && !t.checkpoint_dir.empty()) t.ledger_path = t.checkpoint_dir + "/ledger.jsonl";
  return t;
}

void Announce(const ServerConfig& config, GradaccServer& server) {
  const ServerOptions& options = config.options;
  GRADACC_LOG(INFO, "%s; %s",
              options.tls_cert_file.empty()
                  ? "plaintext (no TLS)" +
                        std::string(options.allow_remote_plaintext ? ", remote clients allowed" : ", loopback only")
                  : std::string(options.tls_client_ca_file.empty() ? "TLS" : "mutual TLS"),
              options.tokens.enabled() ? "bearer tokens required (worker and/or read-only)"
                                       : "no tokens: any client that reaches the port may train");
  for (Trainer* shard : server.trainers()) {
    for (const std::string& note : shard->restore_notes()) GRADACC_LOG(INFO, "%s", note);
    if (shard->num_shards() > 1) {
      GRADACC_LOG(INFO, "shard %d of %d: flat elements [%d, %d) of %d; peers over %s%s", shard->shard(),
                  shard->num_shards(), shard->begin(), shard->end(), shard->layout().num_elements(),
                  options.tls_cert_file.empty() ? "plaintext" : "TLS (this server's certificate as client certificate)",
                  options.tokens.shard.empty() ? "" : " with the shard token");
    }
  }
  Trainer& t = *server.trainer();
  const ModelLayout& layout = t.layout();
  GRADACC_LOG(INFO,
              "serving job '%s' on port %d: %d tensors, %d parameters, %d workers x %d "
              "micro-batches, %d steps",
              t.spec().job_id(), server.port(), layout.tensors().size(), layout.num_elements(),
              t.spec().window().num_workers(), t.spec().window().micro_batches(), t.spec().total_steps());
  if (server.metrics_port() != 0) {
    GRADACC_LOG(INFO, "Prometheus metrics on port %d at /metrics (%s%s)", server.metrics_port(),
                options.tls_cert_file.empty() ? "HTTP" : "HTTPS",
                options.tokens.enabled() ? ", reader or worker token required" : "");
    if (!config.metrics_port_file.empty()) {
      (void)WriteFileAtomically(config.metrics_port_file, absl::StrCat(server.metrics_port(), "\n"));
    }
  }
  if (!config.port_file.empty()) (void)WriteFileAtomically(config.port_file, absl::StrCat(server.port(), "\n"));
}

}  // namespace

absl::StatusOr<v1::JobSpec> LoadJob(const std::string& job_file) {
  if (job_file.empty()) return DefaultJobSpec();
  GRADACC_ASSIGN_OR_RETURN(v1::JobSpec spec, LoadJobSpecFile(job_file));
  const std::string& weights = spec.model().safetensors_path();
  const size_t slash = job_file.rfind('/');
  if (!weights.empty() && weights[0] != '/' && slash != std::string::npos) {
    spec.mutable_model()->set_safetensors_path(job_file.substr(0, slash + 1) + weights);
  }
  return spec;
}

absl::StatusOr<ServerConfig> ConfigFromFlags() {
  ServerConfig c;
  GRADACC_ASSIGN_OR_RETURN(c.spec, LoadJob(absl::GetFlag(FLAGS_job)));
  GRADACC_RETURN_IF_ERROR(ApplyOverrides(c.spec));
  c.check_job = absl::GetFlag(FLAGS_check_job);
  c.dump_job = absl::GetFlag(FLAGS_dump_job);
  c.port_file = absl::GetFlag(FLAGS_port_file);
  c.metrics_port_file = absl::GetFlag(FLAGS_metrics_port_file);
  ServerOptions& o = c.options;
  o.listen = absl::GetFlag(FLAGS_listen);
  GRADACC_ASSIGN_OR_RETURN(o.trainer, TrainerFromFlags());
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.shard_peers = absl::GetFlag(FLAGS_shard_peers);
  GRADACC_ASSIGN_OR_RETURN(o.shards, ShardsFromFlag());
  o.trainer.shard = o.shards.front();
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  o.shard_tls_ca_file = absl::GetFlag(FLAGS_shard_tls_ca);
  o.allow_remote_plaintext = absl::GetFlag(FLAGS_allow_remote_plaintext);
  const std::string probe = absl::GetFlag(FLAGS_grpc_bdp_probe);
  if (probe == "auto") {
    o.grpc_bdp_probe = !IsLoopbackListen(o.listen);
  } else if (probe == "true" || probe == "false") {
    o.grpc_bdp_probe = probe == "true";
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--grpc_bdp_probe=", probe, ": must be auto, true or false"));
  }
  if (absl::GetFlag(FLAGS_grpc_stream_window_kb) < 64 || absl::GetFlag(FLAGS_grpc_stream_window_kb) > (1 << 20)) {
    return absl::InvalidArgumentError("--grpc_stream_window_kb must be within 64..1048576");
  }
  o.grpc_stream_window_bytes = absl::GetFlag(FLAGS_grpc_stream_window_kb) * 1024;
  GRADACC_ASSIGN_OR_RETURN(o.tokens.worker, LoadSecret(absl::GetFlag(FLAGS_worker_token_file), "GRADACC_WORKER_TOKEN"));
  GRADACC_ASSIGN_OR_RETURN(o.tokens.reader, LoadSecret(absl::GetFlag(FLAGS_reader_token_file), "GRADACC_READER_TOKEN"));
  if (o.trainer.num_shards > 1) {
    GRADACC_ASSIGN_OR_RETURN(o.tokens.shard, LoadSecret(absl::GetFlag(FLAGS_shard_token_file), "GRADACC_SHARD_TOKEN"));
  }
  return c;
}

int RunServer(const ServerConfig& config, const sigset_t& signals) {
  if (config.check_job) {
    auto layout = ModelLayout::FromSpec(config.spec.model());
    absl::PrintF("job '%s' is valid: %d tensors, %d parameters, %d workers, %d steps\n", config.spec.job_id(),
                 layout->tensors().size(), layout->num_elements(), config.spec.window().num_workers(),
                 config.spec.total_steps());
    return 0;
  }
  if (!config.dump_job.empty()) {
    std::string text;
    google::protobuf::TextFormat::PrintToString(config.spec, &text);
    (void)WriteFileAtomically(config.dump_job, text);
  }
  auto server = GradaccServer::Start(config.spec, config.options);
  if (!server.ok()) {
    GRADACC_LOG(ERROR, "%s", server.status().ToString());
    return 1;
  }
  Announce(config, **server);
  int signal = 0;
  sigwait(&signals, &signal);
  GRADACC_LOG(INFO, "%s received, shutting down (step %d)", signal == SIGTERM ? "SIGTERM" : "SIGINT",
              (*server)->trainer()->version());
  (*server)->StopPeers();
  for (Trainer* shard : (*server)->trainers()) {
    if (absl::Status c = shard->CheckpointNow(); !c.ok()) {
      GRADACC_LOG(WARNING, "final checkpoint failed: %s", c.ToString());
    } else if (!shard->checkpoint_dir().empty()) {
      GRADACC_LOG(INFO, "checkpoint of step %d in %s", shard->version(), shard->checkpoint_dir());
    }
  }
  (*server)->Shutdown(absl::Seconds(5));
  (*server)->Wait();
  GRADACC_LOG(INFO, "stopped");
  return 0;
}

}  // namespace gradacc
