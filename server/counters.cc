#include "server/counters.h"

#include "common/errors.h"

namespace gradacc {
namespace {

const std::vector<double> kStepSecondsBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,  0.5,    1,     2.5,  5,     10,   30};

}  // namespace

Counters::Counters() : buckets_(kStepSecondsBounds.size(), 0) {}

void Counters::AddBytes(uint64_t received, uint64_t sent) {
  bytes_received_ += received;
  bytes_sent_ += sent;
}

void Counters::Refused(v1::ErrorReason reason) {
  MutexLock lock(&mu_);
  ++rejected_[reason == v1::ERROR_REASON_UNSPECIFIED ? "other" : ReasonLabel(reason)];
}

void Counters::StepTook(double seconds) {
  MutexLock lock(&mu_);
  for (size_t b = 0; b < kStepSecondsBounds.size(); ++b) {
    if (seconds <= kStepSecondsBounds[b]) {
      ++buckets_[b];
      break;
    }
  }
  ++steps_;
  seconds_ += seconds;
}

TrainerCounters Counters::Snapshot() const {
  TrainerCounters c;
  c.bytes_received = bytes_received_;
  c.bytes_sent = bytes_sent_;
  MutexLock lock(&mu_);
  c.rejected_by_reason = rejected_;
  c.step_seconds_bounds = kStepSecondsBounds;
  uint64_t cumulative = 0;
  for (uint64_t n : buckets_) c.step_seconds_counts.push_back(cumulative += n);
  c.step_seconds_count = steps_;
  c.step_seconds_sum = seconds_;
  return c;
}

void Counters::Export(v1::CheckpointCounters* out) const {
  out->set_bytes_received(bytes_received_);
  out->set_bytes_sent(bytes_sent_);
  MutexLock lock(&mu_);
  for (const auto& [reason, n] : rejected_) (*out->mutable_rejected_by_reason())[reason] = n;
}

void Counters::Restore(const v1::CheckpointCounters& in) {
  bytes_received_ = in.bytes_received();
  bytes_sent_ = in.bytes_sent();
  MutexLock lock(&mu_);
  rejected_.clear();
  for (const auto& [reason, n] : in.rejected_by_reason()) rejected_[reason] = n;
}

}  // namespace gradacc
