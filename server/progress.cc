#include "server/progress.h"

namespace gradacc {
namespace {

constexpr size_t kLossHistory = 32;
constexpr size_t kRateWindow = 32;
constexpr size_t kAccuracyKeep = 256;

}  // namespace

void Progress::Restore(const v1::CheckpointState& s, std::string name, uint32_t restarts) {
  for (const v1::LossPoint& p : s.loss_history()) loss_history_.push_back(p);
  last_loss_ = s.last_loss();
  test_accuracy_ = s.test_accuracy();
  test_accuracy_step_ = s.test_accuracy_step();
  restarts_ = restarts;
  restored_from_ = std::move(name);
}

void Progress::Export(v1::CheckpointState* s) const {
  for (const v1::LossPoint& p : loss_history_) *s->add_loss_history() = p;
  s->set_last_loss(last_loss_);
  s->set_test_accuracy(test_accuracy_);
  s->set_test_accuracy_step(test_accuracy_step_);
  s->set_restarts(restarts_);
}

void Progress::RecordStep(uint64_t new_version, double loss, float grad_norm, uint64_t samples,
                          std::vector<uint32_t> missing, const v1::StepTiming& timing, absl::Time at) {
  last_loss_ = loss;
  last_grad_norm_ = grad_norm;
  last_missing_ = std::move(missing);
  last_step_samples_ = samples;
  last_timing_ = timing;
  v1::LossPoint point;
  point.set_step(new_version);
  point.set_loss(loss);
  loss_history_.push_back(point);
  if (loss_history_.size() > kLossHistory) loss_history_.pop_front();
  recent_steps_.emplace_back(at, samples);
  if (recent_steps_.size() > kRateWindow) recent_steps_.pop_front();
}

void Progress::RecordAccuracy(uint64_t step, double accuracy) {
  test_accuracy_ = accuracy;
  test_accuracy_step_ = step;
  v1::AccuracyPoint point;
  point.set_step(step);
  point.set_test_accuracy(accuracy);
  accuracy_history_.push_back(point);
  if (accuracy_history_.size() > kAccuracyKeep) accuracy_history_.pop_front();
}

void Progress::Fill(v1::Status* s) const {
  s->set_last_loss(last_loss_);
  for (const v1::LossPoint& p : loss_history_) *s->add_loss_history() = p;
  if (recent_steps_.size() >= 2) {
    const double dt = absl::ToDoubleSeconds(recent_steps_.back().first - recent_steps_.front().first);
    uint64_t samples = 0;
    for (size_t i = 1; i < recent_steps_.size(); ++i) samples += recent_steps_[i].second;
    if (dt > 0) {
      s->set_steps_per_second(static_cast<double>(recent_steps_.size() - 1) / dt);
      s->set_samples_per_second(static_cast<double>(samples) / dt);
    }
  }
  *s->mutable_last_step() = last_timing_;
  s->set_test_accuracy(test_accuracy_);
  s->set_test_accuracy_step(test_accuracy_step_);
  for (uint32_t m : last_missing_) s->add_last_step_missing_workers(m);
  s->set_last_step_samples(last_step_samples_);
  s->set_restored_from(restored_from_);
  s->set_server_restarts(restarts_);
  s->set_final_params_written(final_written_);
  s->set_workers_ahead_version(workers_ahead_);
  for (const v1::AccuracyPoint& p : accuracy_history_) *s->add_accuracy_history() = p;
}

}  // namespace gradacc
