// gradacc_test_client: a worker process for integration tests. It trains a
// synthetic least-squares problem through the real client library, so that
// every gradient depends on the parameters it pulled:
//   micro-batch m of window v on worker k has s = 1 + (k + v + m) % 3 samples
//   and adds, for every element i,
//     grad[i] += s * (p[i] - target(i)) + offset(k, v, m, i)
//   target(i)       = ((i % 13) - 6) * 0.1
//   offset(k,v,m,i) = (((i * 7 + k * 5 + v * 3 + m) % 9) - 4) * 0.01
//   loss_sum        = s * 0.5 (bookkeeping only)
// client_integration_test.cc recomputes the same trajectory independently.
//
// --untouched=T (a job tensor index) exercises the touched-tensor rule
// (PushHeader.untouched_tensors): this worker adds nothing into tensor T's
// gradient and tells the server it did not touch it (Client::SetUntouched),
// as a PyTorch parameter that no backward() reached has .grad None. When no
// worker of a window touches T, the server does not step it: T keeps its
// value and optimizer state, and its own step count stays where it was.
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/usage.h"
#include "worker/client/client.h"

ABSL_FLAG(std::string, server, "", "server address");
ABSL_FLAG(int, worker, 0, "worker rank");
ABSL_FLAG(int, micro_batches, 2, "micro-batches per window");
ABSL_FLAG(int, first_window_micro_batches, 0,
          "micro-batches in the first window this process computes (0: --micro_batches); a restarted worker "
          "given another number pushes a different contribution for a window the server already holds");
ABSL_FLAG(int, chunk_elements, 100, "elements per pushed chunk");
ABSL_FLAG(int, untouched, -1,
          "a job tensor this worker leaves without gradient in every window, and says so in its pushes "
          "(untouched_tensors); -1: it touches every tensor");
ABSL_FLAG(int, step_delay_ms, 0, "sleep this long in every window (a slow worker)");
ABSL_FLAG(int, window_timeout_s, 60, "give up on a window after this long");
ABSL_FLAG(bool, shared_memory, true, "use shared memory when the server is on this host");
ABSL_FLAG(std::string, wire_format, "f32", "f32, bf16 or f16 through gRPC");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the server");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate");
ABSL_FLAG(std::string, tls_key, "", "PEM client key");
ABSL_FLAG(std::string, token_file, "", "bearer token file (default $GRADACC_TOKEN)");

int main(int argc, char** argv) {
  constexpr char kUsage[] = "gradacc_test_client --server=HOST:PORT --worker=K: a synthetic worker for the tests";
  gradacc::InitUsage(kUsage);
  if (gradacc::HelpRequested(argc, argv)) {
    std::fputs(gradacc::FlagsHelp(kUsage).c_str(), stdout);
    return 0;
  }
  absl::ParseCommandLine(argc, argv);
  gradacc::ClientOptions options;
  options.server = absl::GetFlag(FLAGS_server);
  options.worker = absl::GetFlag(FLAGS_worker);
  options.chunk_elements = absl::GetFlag(FLAGS_chunk_elements);
  options.shared_memory = absl::GetFlag(FLAGS_shared_memory);
  auto wire = gradacc::ParseWireFormat(absl::GetFlag(FLAGS_wire_format));
  if (!wire.ok()) {
    absl::FPrintF(stderr, "test_client: %s\n", wire.status().ToString());
    return 1;
  }
  options.wire_format = *wire;
  options.connect_timeout = absl::Seconds(20);
  options.window_timeout = absl::Seconds(absl::GetFlag(FLAGS_window_timeout_s));
  options.connection.tls_ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.connection.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.connection.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  if (absl::Status t = gradacc::LoadToken(absl::GetFlag(FLAGS_token_file), options.connection); !t.ok()) {
    absl::FPrintF(stderr, "test_client: %s\n", t.ToString());
    return 1;
  }
  auto client = gradacc::Client::Connect(options);
  if (!client.ok()) {
    absl::FPrintF(stderr, "test_client %d: %s\n", options.worker, client.status().ToString());
    return 1;
  }
  gradacc::Client& c = **client;
  absl::PrintF("test_client %d: transport %s\n", options.worker, c.transport());
  const int k = options.worker;
  const int untouched = absl::GetFlag(FLAGS_untouched);
  if (untouched >= static_cast<int>(c.layout().tensors().size())) {
    absl::FPrintF(stderr, "test_client: --untouched=%d: the job has %d tensors\n", untouched,
                  c.layout().tensors().size());
    return 1;
  }
  bool first = true;
  while (!c.done()) {
    const uint64_t v = c.version();
    const int micro_batches = first && absl::GetFlag(FLAGS_first_window_micro_batches) > 0
                                  ? absl::GetFlag(FLAGS_first_window_micro_batches)
                                  : absl::GetFlag(FLAGS_micro_batches);
    first = false;
    for (int m = 0; m < micro_batches; ++m) {
      const int s = 1 + (k + static_cast<int>(v) + m) % 3;
      auto p = c.params();
      auto g = c.grad();
      for (size_t i = 0; i < g.size(); ++i) {
        if (untouched >= 0) {
          const auto& t = c.layout().tensors()[untouched];
          if (i >= t.offset && i < t.offset + t.size) continue;
        }
        const float target = static_cast<float>(static_cast<int>(i % 13) - 6) * 0.1f;
        const float offset = static_cast<float>(static_cast<int>((i * 7 + k * 5 + v * 3 + m) % 9) - 4) * 0.01f;
        g[i] += static_cast<float>(s) * (p[i] - target) + offset;
      }
      c.AddMicroBatch(s, s * 0.5);
    }
    if (untouched >= 0) {
      if (absl::Status s = c.SetUntouched({static_cast<uint32_t>(untouched)}); !s.ok()) {
        absl::FPrintF(stderr, "test_client: %s\n", s.ToString());
        return 1;
      }
    }
    if (absl::GetFlag(FLAGS_step_delay_ms) > 0) {
      absl::SleepFor(absl::Milliseconds(absl::GetFlag(FLAGS_step_delay_ms)));
    }
    auto step = c.Step();
    if (!step.ok()) {
      absl::FPrintF(stderr, "test_client %d: window %d: %s\n", k, v, step.status().ToString());
      return 1;
    }
  }
  absl::PrintF("test_client %d: done at version %d\n", k, c.version());
  return c.Leave().ok() ? 0 : 1;
}
