// GroupClient: hierarchical reduction. The MPI ranks that share a host
// (MPI_Comm_split_type MPI_COMM_TYPE_SHARED) form a group whose lowest rank
// is its leader. Each rank computes its micro-batches into its own gradient
// buffer; at the end of a window the others send theirs to the leader, which
// adds them into its Client's buffer in rank order and pushes one
// contribution for the whole group (PushHeader.covers, sample counts and
// loss sums totalled); then it broadcasts the new parameters to the group.
// Only leaders talk to the server, so its traffic grows with hosts, not
// ranks.
//
// On one host (one group) the leader forms ((g0 + g1) + g2) + ..., exactly
// the server's worker-order reduction, so the results are bit-identical to
// every rank pushing by itself. Across hosts the server adds the groups' sums
// in order: (g0 + g1) + (g2 + g3) instead of ((g0 + g1) + g2) + g3, which is
// deterministic but rounds differently from the flat run.
//
// Every method is collective over the group; thread-compatible.
#ifndef GRADACC_WORKER_TRAINING_GROUP_CLIENT_H_
#define GRADACC_WORKER_TRAINING_GROUP_CLIENT_H_

#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "worker/client/client.h"
#include "worker/client/training_client.h"

namespace gradacc {

class GroupClient final : public TrainingClient {
 public:
  // Collective over MPI_COMM_WORLD. options.worker is ignored (the world
  // rank is used); the leader connects, the others learn the job from it.
  static absl::StatusOr<std::unique_ptr<GroupClient>> Connect(ClientOptions options);
  ~GroupClient() override;

  const v1::JobSpec& job() const override { return job_; }
  uint32_t worker() const override { return static_cast<uint32_t>(world_rank_); }
  uint64_t version() const override { return version_; }
  float loss_scale() const override { return loss_scale_; }
  bool done() const override { return done_; }
  absl::Span<const float> params() const override;
  absl::Span<float> grad() override;
  void AddMicroBatch(uint64_t samples, double loss_sum) override;
  // This rank's gradients of the open window (not the group's: nothing has
  // been reduced before Step).
  void Discard() override;
  // This rank's untouched tensors; the group pushes those no rank of it
  // touched.
  absl::Status SetUntouched(std::vector<uint32_t> tensors) override;
  absl::StatusOr<StepResult> Step() override;
  // Hierarchical reduction has fixed membership: no data plan.
  const v1::WindowPlan& plan() const override { return no_plan_; }
  absl::StatusOr<StepResult> WaitNextWindow() override {
    return absl::UnimplementedError("hierarchical reduction has no elastic membership");
  }
  std::string transport() const override;
  // Leader only (the others have no connection): status and reports go
  // through it; Leave leaves for the whole group.
  absl::Status ReportTestAccuracy(double accuracy, uint64_t step) override;
  absl::StatusOr<v1::Status> GetStatus() override;
  absl::Status Leave() override;

  bool leader() const { return local_rank_ == 0; }
  int group_size() const { return local_size_; }

 private:
  GroupClient() = default;
  // The leader's view of the step's outcome, broadcast to the group.
  absl::Status ShareStep(const absl::StatusOr<StepResult>& result, StepResult* out);

  MPI_Comm local_ = MPI_COMM_NULL;
  int world_rank_ = 0, local_rank_ = 0, local_size_ = 1;
  std::vector<uint32_t> members_;  // world ranks of the group, in order
  std::unique_ptr<Client> client_;  // the leader's
  v1::JobSpec job_;
  uint64_t version_ = 0;
  float loss_scale_ = 0;
  bool done_ = false;
  // Non-leaders: their parameters and gradient; the leader: a receive
  // buffer for the others' gradients.
  FloatBuffer params_, grad_, incoming_;
  // Non-leaders: 1 for each job tensor this rank's window did not touch.
  std::vector<uint8_t> untouched_;
  uint64_t samples_ = 0;
  uint32_t micro_batches_ = 0;
  double loss_sum_ = 0;
  v1::WindowPlan no_plan_;
};

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_GROUP_CLIENT_H_
