// linear_worker: a training worker written against the installed client
// library only (find_package(gradacc), gradacc::client).
//
//   linear_worker HOST:PORT WORKER NUM_WORKERS [grpc|shm]
//
// Trains y = w.x + b on 64 fixed samples (4 features, known w and b) with
// the server's job: tensors "w" [4] and "b" [1] initialised to zeros, plain
// SGD, mean over samples. Each window the workers split the samples evenly
// and each adds the gradients of 2 micro-batches of the summed squared loss
// 0.5 * (w.x + b - y)^2, so every window is one full-batch gradient step.
// When the server says the job is done, the parameters must be the known
// ones (within 1e-3) and the last window's mean loss below 1e-6; exit code 0
// only then.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "worker/client/client.h"

namespace {

constexpr int kSamples = 64;
constexpr int kFeatures = 4;
constexpr int kMicroBatches = 2;
constexpr float kTrueW[kFeatures] = {0.5f, -1.25f, 2.0f, 0.75f};
constexpr float kTrueB = -0.3f;

struct Sample {
  float x[kFeatures];
  float y;
};

// The same samples in every worker: uniform in [-1, 1) from a fixed LCG.
std::vector<Sample> MakeSamples() {
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto uniform = [&state] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<double>(state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  };
  std::vector<Sample> samples(kSamples);
  for (Sample& s : samples) {
    double y = kTrueB;
    for (int i = 0; i < kFeatures; ++i) {
      s.x[i] = uniform();
      y += static_cast<double>(kTrueW[i]) * s.x[i];
    }
    s.y = static_cast<float>(y);
  }
  return samples;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::fprintf(stderr, "usage: linear_worker HOST:PORT WORKER NUM_WORKERS [grpc|shm]\n");
    return 2;
  }
  const int worker = std::atoi(argv[2]);
  const int num_workers = std::atoi(argv[3]);
  if (num_workers < 1 || worker < 0 || worker >= num_workers || kSamples % (num_workers * kMicroBatches) != 0) {
    std::fprintf(stderr, "linear_worker: bad WORKER or NUM_WORKERS\n");
    return 2;
  }
  gradacc::ClientOptions options;
  options.server = argv[1];
  options.worker = static_cast<uint32_t>(worker);
  options.shared_memory = argc < 5 || std::strcmp(argv[4], "grpc") != 0;
  options.connect_timeout = absl::Seconds(30);
  options.window_timeout = absl::Seconds(60);
  auto connected = gradacc::Client::Connect(options);
  if (!connected.ok()) {
    std::fprintf(stderr, "linear_worker %d: %s\n", worker, connected.status().ToString().c_str());
    return 1;
  }
  gradacc::Client& client = **connected;
  const int w_tensor = client.layout().Find("w");
  const int b_tensor = client.layout().Find("b");
  if (w_tensor < 0 || b_tensor < 0 || client.param(w_tensor).size() != kFeatures ||
      client.param(b_tensor).size() != 1) {
    std::fprintf(stderr, "linear_worker %d: the job's model is not w [4], b [1]\n", worker);
    return 1;
  }

  const std::vector<Sample> samples = MakeSamples();
  const int per_micro_batch = kSamples / (num_workers * kMicroBatches);
  double last_loss = -1;
  while (!client.done()) {
    for (int m = 0; m < kMicroBatches; ++m) {
      absl::Span<const float> w = client.param(w_tensor);
      const float b = client.param(b_tensor)[0];
      absl::Span<float> grad_w = client.grad(w_tensor);
      absl::Span<float> grad_b = client.grad(b_tensor);
      double loss_sum = 0;
      const int first = (worker * kMicroBatches + m) * per_micro_batch;
      for (int j = first; j < first + per_micro_batch; ++j) {
        const Sample& s = samples[j];
        float residual = b - s.y;
        for (int i = 0; i < kFeatures; ++i) residual += w[i] * s.x[i];
        for (int i = 0; i < kFeatures; ++i) grad_w[i] += residual * s.x[i];
        grad_b[0] += residual;
        loss_sum += 0.5 * residual * residual;
      }
      client.AddMicroBatch(per_micro_batch, loss_sum);
    }
    auto step = client.Step();
    if (!step.ok()) {
      std::fprintf(stderr, "linear_worker %d: %s\n", worker, step.status().ToString().c_str());
      return 1;
    }
    last_loss = step->loss;
  }

  absl::Span<const float> w = client.param(w_tensor);
  const float b = client.param(b_tensor)[0];
  std::printf("linear_worker %d: version %llu over %s, last loss %.3g, w = [%.6f %.6f %.6f %.6f], b = %.6f\n", worker,
              static_cast<unsigned long long>(client.version()), client.transport().c_str(), last_loss, w[0], w[1],
              w[2], w[3], b);
  bool ok = last_loss >= 0 && last_loss < 1e-6 && std::fabs(b - kTrueB) < 1e-3f;
  for (int i = 0; i < kFeatures; ++i) ok = ok && std::fabs(w[i] - kTrueW[i]) < 1e-3f;
  if (!ok) {
    std::fprintf(stderr, "linear_worker %d: FAIL: the final parameters are not w = [0.5 -1.25 2 0.75], b = -0.3\n",
                 worker);
    return 1;
  }
  if (absl::Status left = client.Leave(); !left.ok()) {
    std::fprintf(stderr, "linear_worker %d: leave: %s\n", worker, left.ToString().c_str());
    return 1;
  }
  return 0;
}
