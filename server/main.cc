// gradacc-server: parses flags, loads the job and serves it until SIGTERM or
// SIGINT (graceful: parked calls finish with UNAVAILABLE, exit 0).
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/buffer.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "common/job_spec.h"
#include "common/usage.h"
#include "google/protobuf/text_format.h"
#include "server/server.h"

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
ABSL_FLAG(bool, allow_remote_plaintext, false, "serve non-loopback addresses without TLS (trusted networks only)");
ABSL_FLAG(int, shard, 0, "this server's shard (0-based) of a sharded job");
ABSL_FLAG(int, num_shards, 1, "shards the parameters are split over (each owns a contiguous flat range)");
ABSL_FLAG(std::vector<std::string>, shard_peers, {},
          "every shard's HOST:PORT in shard order, this one included (sharded jobs)");
ABSL_FLAG(std::string, metrics_listen, "", "HOST:PORT to serve Prometheus /metrics on (port 0: a free one)");
ABSL_FLAG(std::string, metrics_port_file, "", "write the metrics port to this file once serving");
ABSL_FLAG(std::string, shared_memory_dir, "/dev/shm",
          "tmpfs folder for the shared-memory segments of workers on this host; empty = gRPC only");
ABSL_FLAG(std::string, ledger_file, "",
          "append the step ledger here (JSON lines); default: <checkpoint_dir>/ledger.jsonl with checkpoints");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "resume from the newest valid checkpoint here and write checkpoints into it");
ABSL_FLAG(int64_t, checkpoint_every, 1,
          "checkpoint every N steps (1 = every broadcast version is durable before workers see it)");
ABSL_FLAG(int, keep_checkpoints, 3, "checkpoints to keep");
ABSL_FLAG(double, push_timeout_s, 120, "cancel a push stream not complete after this long");
ABSL_FLAG(double, worker_timeout_s, 60, "a worker silent this long (no call, no parked pull) is shown as lost");
ABSL_FLAG(std::string, policy, "", "override window.policy: wait or quorum");
ABSL_FLAG(int, quorum, 0, "override window.quorum (QUORUM: contributions needed at the deadline)");
ABSL_FLAG(int64_t, deadline_ms, 0, "override window.deadline_ms (QUORUM: from window open)");
ABSL_FLAG(std::vector<std::string>, kill_at, {},
          "fault injection for tests: push:W:N, mid_broadcast:W, after_publish:W (SIGKILL there)");

namespace {

int Fail(const std::string& message) {
  absl::FPrintF(stderr, "gradacc-server: %s\n", message);
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  constexpr char kUsage[] = "gradacc-server [--job=FILE] [--listen=HOST:PORT] ...: serves one gradacc job";
  gradacc::InitUsage(kUsage);
  if (gradacc::HelpRequested(argc, argv)) {
    std::fputs(gradacc::FlagsHelp(kUsage).c_str(), stdout);
    return 0;
  }
  gradacc::KeepFreedMemoryForReuse();
  absl::ParseCommandLine(argc, argv);

  // Signals are taken by one thread with sigwait, so they must be blocked in
  // every thread, which inherit this mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  gradacc::v1::JobSpec spec;
  const std::string job_file = absl::GetFlag(FLAGS_job);
  if (job_file.empty()) {
    spec = gradacc::DefaultJobSpec();
  } else {
    auto loaded = gradacc::LoadJobSpecFile(job_file);
    if (!loaded.ok()) return Fail(loaded.status().ToString());
    spec = *std::move(loaded);
  }
  if (!absl::GetFlag(FLAGS_job_id).empty()) spec.set_job_id(absl::GetFlag(FLAGS_job_id));
  if (absl::GetFlag(FLAGS_workers) > 0) spec.mutable_window()->set_num_workers(absl::GetFlag(FLAGS_workers));
  if (absl::GetFlag(FLAGS_micro_batches) > 0) {
    spec.mutable_window()->set_micro_batches(absl::GetFlag(FLAGS_micro_batches));
  }
  if (absl::GetFlag(FLAGS_micro_batch_size) > 0) {
    spec.mutable_window()->set_micro_batch_size(absl::GetFlag(FLAGS_micro_batch_size));
  }
  if (absl::GetFlag(FLAGS_total_steps) > 0) spec.set_total_steps(absl::GetFlag(FLAGS_total_steps));
  if (absl::GetFlag(FLAGS_epochs) > 0) {
    if (absl::GetFlag(FLAGS_total_steps) > 0) return Fail("--epochs and --total_steps exclude each other");
    auto per_epoch = gradacc::StepsPerEpoch(spec);
    if (!per_epoch.ok()) return Fail(per_epoch.status().ToString());
    spec.set_total_steps(absl::GetFlag(FLAGS_epochs) * *per_epoch);
  }
  if (absl::GetFlag(FLAGS_lr) > 0) spec.mutable_optimizer()->set_lr(absl::GetFlag(FLAGS_lr));
  if (absl::GetFlag(FLAGS_seed) >= 0) spec.set_seed(absl::GetFlag(FLAGS_seed));
  const std::string policy = absl::GetFlag(FLAGS_policy);
  if (policy == "quorum") {
    spec.mutable_window()->set_policy(gradacc::v1::WindowRule::POLICY_QUORUM);
  } else if (policy == "wait") {
    spec.mutable_window()->set_policy(gradacc::v1::WindowRule::POLICY_WAIT);
  } else if (!policy.empty()) {
    return Fail("--policy must be wait or quorum");
  }
  if (absl::GetFlag(FLAGS_quorum) > 0) spec.mutable_window()->set_quorum(absl::GetFlag(FLAGS_quorum));
  if (absl::GetFlag(FLAGS_deadline_ms) > 0) spec.mutable_window()->set_deadline_ms(absl::GetFlag(FLAGS_deadline_ms));
  if (absl::Status s = gradacc::NormalizeJobSpec(spec); !s.ok()) return Fail(s.ToString());
  if (absl::GetFlag(FLAGS_check_job)) {
    auto layout = gradacc::ModelLayout::FromSpec(spec.model());
    absl::PrintF("job '%s' is valid: %d tensors, %d parameters, %d workers, %d steps\n", spec.job_id(),
                 layout->tensors().size(), layout->num_elements(), spec.window().num_workers(), spec.total_steps());
    return 0;
  }
  if (!absl::GetFlag(FLAGS_dump_job).empty()) {
    std::string text;
    google::protobuf::TextFormat::PrintToString(spec, &text);
    std::ofstream(absl::GetFlag(FLAGS_dump_job)) << text;
  }

  gradacc::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.trainer.final_params_path = absl::GetFlag(FLAGS_output);
  options.trainer.max_pull_wait = absl::Seconds(absl::GetFlag(FLAGS_max_pull_wait_s));
  options.trainer.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  options.trainer.checkpoint_every = std::max<int64_t>(1, absl::GetFlag(FLAGS_checkpoint_every));
  options.trainer.keep_checkpoints = std::max(1, absl::GetFlag(FLAGS_keep_checkpoints));
  options.trainer.push_timeout = absl::Seconds(absl::GetFlag(FLAGS_push_timeout_s));
  options.trainer.worker_timeout = absl::Seconds(absl::GetFlag(FLAGS_worker_timeout_s));
  options.trainer.kill_at = absl::GetFlag(FLAGS_kill_at);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (absl::GetFlag(FLAGS_num_shards) < 1 || absl::GetFlag(FLAGS_shard) < 0) return Fail("bad --shard/--num_shards");
  options.trainer.shard = absl::GetFlag(FLAGS_shard);
  options.trainer.num_shards = absl::GetFlag(FLAGS_num_shards);
  options.shard_peers = absl::GetFlag(FLAGS_shard_peers);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.allow_remote_plaintext = absl::GetFlag(FLAGS_allow_remote_plaintext);
  auto worker_token = gradacc::LoadSecret(absl::GetFlag(FLAGS_worker_token_file), "GRADACC_WORKER_TOKEN");
  if (!worker_token.ok()) return Fail(worker_token.status().ToString());
  auto reader_token = gradacc::LoadSecret(absl::GetFlag(FLAGS_reader_token_file), "GRADACC_READER_TOKEN");
  if (!reader_token.ok()) return Fail(reader_token.status().ToString());
  options.tokens.worker = *worker_token;
  options.tokens.reader = *reader_token;
  options.trainer.ledger_path = absl::GetFlag(FLAGS_ledger_file);
  options.trainer.shared_memory_dir = absl::GetFlag(FLAGS_shared_memory_dir);
  if (options.trainer.ledger_path.empty() && !options.trainer.checkpoint_dir.empty()) {
    options.trainer.ledger_path = options.trainer.checkpoint_dir + "/ledger.jsonl";
  }
  auto server = gradacc::GradaccServer::Start(spec, options);
  if (!server.ok()) return Fail(server.status().ToString());

  absl::FPrintF(stderr, "gradacc-server: %s; %s\n",
                options.tls_cert_file.empty()
                    ? "plaintext (no TLS)" + std::string(options.allow_remote_plaintext ? ", remote clients allowed"
                                                                                       : ", loopback only")
                    : std::string(options.tls_client_ca_file.empty() ? "TLS" : "mutual TLS"),
                options.tokens.enabled() ? "bearer tokens required (worker and/or read-only)"
                                         : "no tokens: any client that reaches the port may train");
  for (const std::string& note : (*server)->trainer()->restore_notes()) {
    absl::FPrintF(stderr, "gradacc-server: %s\n", note);
  }
  const gradacc::ModelLayout& layout = (*server)->trainer()->layout();
  if ((*server)->trainer()->num_shards() > 1) {
    absl::FPrintF(stderr, "gradacc-server: shard %d of %d: flat elements [%d, %d) of %d\n",
                  (*server)->trainer()->shard(), (*server)->trainer()->num_shards(), (*server)->trainer()->begin(),
                  (*server)->trainer()->end(), layout.num_elements());
  }
  absl::FPrintF(stderr,
                "gradacc-server: serving job '%s' on port %d: %d tensors, %d parameters, %d workers x %d "
                "micro-batches, %d steps\n",
                (*server)->trainer()->spec().job_id(), (*server)->port(), layout.tensors().size(),
                layout.num_elements(), (*server)->trainer()->spec().window().num_workers(),
                (*server)->trainer()->spec().window().micro_batches(), (*server)->trainer()->spec().total_steps());
  if ((*server)->metrics_port() != 0) {
    absl::FPrintF(stderr, "gradacc-server: Prometheus metrics on port %d at /metrics\n", (*server)->metrics_port());
    const std::string metrics_file = absl::GetFlag(FLAGS_metrics_port_file);
    if (!metrics_file.empty()) {
      std::ofstream(metrics_file + ".tmp") << (*server)->metrics_port() << "\n";
      std::rename((metrics_file + ".tmp").c_str(), metrics_file.c_str());
    }
  }
  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << (*server)->port() << "\n";
    std::rename(tmp.c_str(), port_file.c_str());
  }

  int signal = 0;
  sigwait(&signals, &signal);
  absl::FPrintF(stderr, "gradacc-server: %s received, shutting down (step %d)\n",
                signal == SIGTERM ? "SIGTERM" : "SIGINT", (*server)->trainer()->version());
  (*server)->StopPeers();
  if (absl::Status c = (*server)->trainer()->CheckpointNow(); !c.ok()) {
    absl::FPrintF(stderr, "gradacc-server: final checkpoint failed: %s\n", c.ToString());
  } else if (!absl::GetFlag(FLAGS_checkpoint_dir).empty()) {
    absl::FPrintF(stderr, "gradacc-server: checkpoint of step %d in %s\n", (*server)->trainer()->version(),
                  absl::GetFlag(FLAGS_checkpoint_dir));
  }
  (*server)->Shutdown(absl::Seconds(5));
  (*server)->Wait();
  absl::FPrintF(stderr, "gradacc-server: stopped\n");
  return 0;
}
