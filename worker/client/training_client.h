// TrainingClient: what a training loop needs from a worker's connection to
// its job, whoever makes the connection: a Client (ClientAdapter, here), or
// a GroupClient (worker/training/group_client.h: hierarchical reduction over the
// MPI ranks of a host). Part of the client library: the Python package and
// gradacc-worker's loop both use it, neither needs the other's code.
//
// Thread-compatible, as Client.
#ifndef GRADACC_WORKER_CLIENT_TRAINING_CLIENT_H_
#define GRADACC_WORKER_CLIENT_TRAINING_CLIENT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/client/client.h"

namespace gradacc {

class TrainingClient {
 public:
  virtual ~TrainingClient() = default;
  virtual const v1::JobSpec& job() const = 0;
  virtual uint32_t worker() const = 0;
  virtual uint64_t version() const = 0;
  // Client::loss_scale: the open window's loss scale (0: no loss scaling).
  virtual float loss_scale() const = 0;
  virtual bool done() const = 0;
  virtual absl::Span<const float> params() const = 0;
  virtual absl::Span<float> grad() = 0;
  virtual void AddMicroBatch(uint64_t samples, double loss_sum) = 0;
  // Client::Discard: this worker's gradients of the open window dropped.
  virtual void Discard() = 0;
  // Client::SetUntouched: the tensors this worker's window did not touch.
  virtual absl::Status SetUntouched(std::vector<uint32_t> tensors) = 0;
  virtual absl::StatusOr<StepResult> Step() = 0;
  // A job with a data plan (Client::plan, Client::WaitNextWindow).
  virtual const v1::WindowPlan& plan() const = 0;
  virtual absl::StatusOr<StepResult> WaitNextWindow() = 0;
  virtual std::string transport() const = 0;
  virtual absl::Status ReportTestAccuracy(double accuracy, uint64_t step) = 0;
  virtual absl::StatusOr<v1::Status> GetStatus() = 0;
  virtual absl::Status Leave() = 0;
};

class ClientAdapter final : public TrainingClient {
 public:
  explicit ClientAdapter(Client& client) : c_(client) {}
  const v1::JobSpec& job() const override { return c_.job(); }
  uint32_t worker() const override { return c_.worker(); }
  uint64_t version() const override { return c_.version(); }
  float loss_scale() const override { return c_.loss_scale(); }
  bool done() const override { return c_.done(); }
  absl::Span<const float> params() const override { return c_.params(); }
  absl::Span<float> grad() override { return c_.grad(); }
  void AddMicroBatch(uint64_t samples, double loss_sum) override { c_.AddMicroBatch(samples, loss_sum); }
  void Discard() override { c_.Discard(); }
  absl::Status SetUntouched(std::vector<uint32_t> tensors) override { return c_.SetUntouched(std::move(tensors)); }
  absl::StatusOr<StepResult> Step() override { return c_.Step(); }
  const v1::WindowPlan& plan() const override { return c_.plan(); }
  absl::StatusOr<StepResult> WaitNextWindow() override { return c_.WaitNextWindow(); }
  std::string transport() const override { return c_.transport(); }
  absl::Status ReportTestAccuracy(double accuracy, uint64_t step) override {
    return c_.ReportTestAccuracy(accuracy, step);
  }
  absl::StatusOr<v1::Status> GetStatus() override { return c_.GetStatus(); }
  absl::Status Leave() override { return c_.Leave(); }

 private:
  Client& c_;
};

}  // namespace gradacc

#endif  // GRADACC_WORKER_CLIENT_TRAINING_CLIENT_H_
