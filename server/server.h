// GradaccServer: a running gRPC server for one job — the data plane, the
// control plane, the standard health service and server reflection — over
// an owned Trainer.
//
// Thread-safe. Start() returns once the server is listening; Shutdown() is
// graceful: new calls are refused, parked pulls and watches finish with
// UNAVAILABLE, in-flight calls get `grace` to complete.
#ifndef GRADACC_SERVER_SERVER_H_
#define GRADACC_SERVER_SERVER_H_

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "gradacc/v1/job.pb.h"
#include "server/trainer.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace gradacc {

class ShardExchange;
class ShardRouter;
class DataPlaneServiceImpl;
class ControlPlaneServiceImpl;
class HttpServer;

struct ServerOptions {
  std::string listen = "127.0.0.1:0";  // host:port; port 0 = pick a free one
  TrainerOptions trainer;
  int max_message_bytes = 64 << 20;
  // gRPC's bandwidth-delay-product probing on the server's receive side
  // (off: push windows stay at grpc_stream_window_bytes, so paused streams
  // hold little, but a push across hosts no longer fills its link).
  // --grpc_bdp_probe=auto turns it off for a server on loopback only.
  bool grpc_bdp_probe = true;
  // The receive window per stream (GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES).
  int grpc_stream_window_bytes = 1 << 20;
  // HOST:PORT for Prometheus /metrics; empty = none. Over HTTPS with the
  // server's certificate when it has one; with tokens, only for the reader
  // or worker token (401 otherwise).
  std::string metrics_listen;
  // TLS: PEM files. With client_ca_file, clients must present a certificate
  // signed by that CA (mutual TLS).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // Bearer tokens; none configured = no token checks. A sharded server with
  // tokens needs tokens.shard (what shards present to each other).
  TokenSet tokens;
  // Without TLS the server refuses non-loopback addresses (its gRPC and
  // metrics addresses, its peer shards') unless this is set.
  bool allow_remote_plaintext = false;
  // Sharded job: every shard's gRPC address, in shard order (this shard's
  // own entry included); trainer.shard / trainer.num_shards say which.
  std::vector<std::string> shard_peers;
  // The shards this process serves on its one address (sharded jobs);
  // empty = trainer.shard alone. With several, each keeps its own files:
  // checkpoint_dir/shard-<i>, and ".shard-<i>" after the ledger and output
  // file names.
  std::vector<uint32_t> shards;
  // With TLS: the CA that signed the peers' certificates (empty: the
  // client CA). Shards present tls_cert_file as client certificate.
  std::string shard_tls_ca_file;
  absl::Duration shard_timeout = absl::Minutes(5);
};

class GradaccServer {
 public:
  static absl::StatusOr<std::unique_ptr<GradaccServer>> Start(const v1::JobSpec& spec,
                                                              const ServerOptions& options);
  ~GradaccServer();

  int port() const { return port_; }
  int metrics_port() const;
  // The first shard served (the only one unless ServerOptions.shards has
  // several), and all of them.
  Trainer* trainer() { return cores_.front().trainer.get(); }
  std::vector<Trainer*> trainers();

  // Stops waiting for peer shards (a step in progress then finishes on this
  // shard's own norm), so a final checkpoint is not held up by a peer.
  void StopPeers();
  void Shutdown(absl::Duration grace = absl::Seconds(5));
  // Blocks until Shutdown() has completed.
  void Wait();

 private:
  GradaccServer() = default;

  // One shard this process serves.
  struct Core {
    std::unique_ptr<ShardExchange> exchange;  // outlives the trainer
    std::unique_ptr<Trainer> trainer;
  };
  absl::Status AddCore(const v1::JobSpec& spec, const ServerOptions& options, uint32_t shard,
                       const InitialParametersSource& initial);

  std::vector<Core> cores_;
  std::unique_ptr<ShardRouter> router_;
  std::unique_ptr<class DataPlaneServiceImpl> data_plane_;
  std::unique_ptr<class ControlPlaneServiceImpl> control_plane_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<class HttpServer> metrics_;
  int port_ = 0;
  std::once_flag shutdown_once_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_SERVER_H_
