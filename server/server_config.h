// gradacc-server's command line: its flags, the job they describe and the
// server's options, and the server's life after parsing (serve until
// SIGTERM/SIGINT, then checkpoint and stop). main.cc only calls these.
// Free functions; call ConfigFromFlags after absl::ParseCommandLine.
#ifndef GRADACC_SERVER_SERVER_CONFIG_H_
#define GRADACC_SERVER_SERVER_CONFIG_H_

#include <signal.h>

#include <string>

#include "absl/status/statusor.h"
#include "gradacc/v1/job.pb.h"
#include "server/server.h"

namespace gradacc {

struct ServerConfig {
  v1::JobSpec spec;  // normalised
  ServerOptions options;
  std::string port_file;          // write the bound port here once serving
  std::string metrics_port_file;  // and the metrics port here
  std::string dump_job;           // write the effective job spec here
  bool check_job = false;         // only check the job and print a summary
};

// The job in `job_file` (protobuf text format, or JSON when it ends in
// .json), or the built-in job when empty. A relative
// model.safetensors_path is taken relative to the job file's folder.
absl::StatusOr<v1::JobSpec> LoadJob(const std::string& job_file);

// The configuration gradacc-server's flags describe (the job with its
// command-line overrides applied and normalised, tokens loaded).
absl::StatusOr<ServerConfig> ConfigFromFlags();

// Serves `config` until one of `signals` (blocked in every thread) arrives;
// then checkpoints and shuts down gracefully. Returns the exit code.
int RunServer(const ServerConfig& config, const sigset_t& signals);

}  // namespace gradacc

#endif  // GRADACC_SERVER_SERVER_CONFIG_H_
