// Progress: how training is going, as status reports it — the loss history,
// throughput over the last steps, the last step's timings, samples and
// missing workers, reported test accuracy, and where the job resumed from.
// Plain data, no display strings (formatting is the client's).
//
// Thread-compatible: LockedWindow guards it with the window mutex.
#ifndef GRADACC_SERVER_PROGRESS_H_
#define GRADACC_SERVER_PROGRESS_H_

#include <algorithm>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "gradacc/v1/checkpoint.pb.h"
#include "gradacc/v1/control.pb.h"

namespace gradacc {

class Progress {
 public:
  // Resumed from a checkpoint (`name`: its folder name); `restarts`: the
  // job's resumes so far, this one included (Checkpointer::CountResume).
  void Restore(const v1::CheckpointState& state, std::string name, uint32_t restarts);
  // What a checkpoint keeps of it.
  void Export(v1::CheckpointState* state) const;

  void RecordStep(uint64_t new_version, double loss, float grad_norm, uint64_t samples,
                  std::vector<uint32_t> missing, const v1::StepTiming& timing, absl::Time at);
  void RecordAccuracy(uint64_t step, double accuracy);
  void SetLastTiming(const v1::StepTiming& timing) { last_timing_ = timing; }
  void SetFinalWritten() { final_written_ = true; }
  void NoteWorkersAhead(uint64_t version) { workers_ahead_ = std::max(workers_ahead_, version); }

  double last_loss() const { return last_loss_; }
  // The fields of `status` this class knows.
  void Fill(v1::Status* status) const;

 private:
  double last_loss_ = 0;
  double last_grad_norm_ = 0;
  std::deque<v1::LossPoint> loss_history_;
  std::deque<std::pair<absl::Time, uint64_t>> recent_steps_;  // (time, samples)
  v1::StepTiming last_timing_;
  std::vector<uint32_t> last_missing_;
  uint64_t last_step_samples_ = 0;
  double test_accuracy_ = -1;
  uint64_t test_accuracy_step_ = 0;
  std::deque<v1::AccuracyPoint> accuracy_history_;
  std::string restored_from_;
  uint32_t restarts_ = 0;
  bool final_written_ = false;
  uint64_t workers_ahead_ = 0;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_PROGRESS_H_
