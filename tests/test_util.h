// Helpers shared by gradacc's tests: driving a Trainer the way the gRPC
// service does, and comparing float vectors.
#ifndef GRADACC_TESTS_TEST_UTIL_H_
#define GRADACC_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/trainer.h"

namespace gradacc::testing {

// One contribution as a worker would push it.
struct Contribution {
  uint32_t worker = 0;
  uint64_t window = 0;
  uint64_t key = 0;
  uint64_t samples = 1;
  double loss_sum = 0;
  std::vector<float> grad;  // flat over the model
};

inline std::string Bytes(const float* data, size_t n) {
  std::string out(n * sizeof(float), '\0');
  std::memcpy(out.data(), data, out.size());
  return out;
}

// The push header of `c` (one micro-batch).
inline v1::PushHeader HeaderOf(const Contribution& c, uint64_t num_elements) {
  v1::PushHeader h;
  h.set_worker(c.worker);
  h.set_window(c.window);
  h.set_contribution_key(c.key);
  h.set_micro_batches(1);
  h.set_samples(c.samples);
  h.set_loss_sum(c.loss_sum);
  h.set_num_elements(num_elements);
  return h;
}

// Pushes `c` through BeginPush / AddChunk (chunks of `chunk` elements, in
// tensor order) / Commit, and waits for the version when it closed the
// window.
inline absl::StatusOr<PushResult> Push(Trainer& trainer, const Contribution& c, uint64_t chunk = 5) {
  auto session = trainer.BeginPush(HeaderOf(c, trainer.layout().num_elements()));
  if (!session.ok()) return session.status();
  for (size_t i = 0; i < trainer.layout().tensors().size(); ++i) {
    const auto& t = trainer.layout().tensors()[i];
    for (uint64_t off = 0; off < t.size; off += chunk) {
      const uint64_t n = std::min(chunk, t.size - off);
      absl::Status s = (*session)->AddChunk(static_cast<uint32_t>(i), off, Bytes(c.grad.data() + t.offset + off, n));
      if (!s.ok()) return s;
    }
  }
  auto result = trainer.Commit(std::move(*session));
  // As the gRPC push does: a push that closed its window is answered once
  // the new version is published.
  if (result.ok() && result->closed_window && !trainer.AwaitVersion(result->window + 1, absl::Seconds(60))) {
    return absl::DeadlineExceededError("the closed window's version was not published within 60 s");
  }
  return result;
}

inline void JoinAll(Trainer& trainer) {
  for (uint32_t w = 0; w < trainer.spec().window().num_workers(); ++w) {
    v1::JoinRequest r;
    r.set_worker(w);
    (void)trainer.Join(r);
  }
}

inline bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace gradacc::testing

#endif  // GRADACC_TESTS_TEST_UTIL_H_
