#include "server/membership.h"

namespace gradacc {

Membership::Membership(uint32_t size, bool elastic) : elastic_(elastic), workers_(size) {
  if (!elastic_) {
    for (WorkerRecord& w : workers_) w.member = true;
  }
}

void Membership::Touch(uint32_t worker, v1::WorkerState state, const std::string& hostname, absl::Time now) {
  WorkerRecord& w = workers_[worker];
  w.state = state;
  w.hostname = hostname;
  w.last_seen = now;
}

void Membership::Leave(uint32_t worker, absl::Time now) {
  WorkerRecord& w = workers_[worker];
  w.state = v1::WORKER_STATE_LEFT;
  w.last_seen = now;
  if (elastic_) w.member = false;
  for (WorkerRecord& covered : workers_) {
    if (covered.covered_by == static_cast<int64_t>(worker)) {
      covered.state = v1::WORKER_STATE_LEFT;
      covered.last_seen = now;
    }
  }
}

bool Membership::Lost(uint32_t worker, absl::Time now, absl::Duration timeout) const {
  const WorkerRecord& w = workers_[worker];
  const WorkerRecord& live = w.covered_by >= 0 ? workers_[w.covered_by] : w;
  return w.joined() && live.parked_pulls == 0 && now - live.last_seen > timeout;
}

uint32_t Membership::ActiveMembers() const {
  uint32_t n = 0;
  for (const WorkerRecord& w : workers_) n += w.member && w.state != v1::WORKER_STATE_LEFT;
  return n;
}

bool Membership::AnyJoined() const {
  for (const WorkerRecord& w : workers_) {
    if (w.state != v1::WORKER_STATE_NEVER_JOINED) return true;
  }
  return false;
}

}  // namespace gradacc
