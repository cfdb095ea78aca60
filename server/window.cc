#include "server/window.h"

#include <algorithm>

namespace gradacc {

Window::Window(uint32_t num_workers) : slots_(num_workers), expected_(num_workers, false) {}

void Window::Open(uint64_t number, const std::vector<bool>& expected, absl::Time now) {
  number_ = number;
  opened_ = now;
  for (auto& slot : slots_) slot.reset();
  expected_ = expected;
  expected_count_ = static_cast<uint32_t>(std::count(expected_.begin(), expected_.end(), true));
  received_ = 0;
  samples_ = 0;
}

void Window::Expect(uint32_t worker, bool expected) {
  if (expected_[worker] == expected) return;
  expected_[worker] = expected;
  expected ? ++expected_count_ : --expected_count_;
}

void Window::Add(uint32_t worker, Slot slot) {
  samples_ += slot.samples;
  slots_[worker] = std::move(slot);
  ++received_;
}

std::vector<uint32_t> Window::Missing() const {
  std::vector<uint32_t> missing;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (expected_[i] && !slots_[i].has_value()) missing.push_back(i);
  }
  return missing;
}

bool Window::Complete(const v1::WindowRule& rule, bool elastic, bool deadline_passed) const {
  if (received_ == 0) return false;
  bool complete = received_ >= expected_count_;
  if (elastic && received_ < std::max(1u, rule.min_workers())) complete = false;
  if (!complete && deadline_passed && rule.policy() == v1::WindowRule::POLICY_QUORUM &&
      received_ >= std::max(1u, rule.quorum())) {
    complete = true;
  }
  return complete;
}

ClosingWindow Window::Take() {
  ClosingWindow w;
  w.window = number_;
  w.opened = opened_;
  w.last_arrival = absl::Now();
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].has_value()) {
      w.slots.push_back(std::move(*slots_[i]));
      w.workers.push_back(i);
      slots_[i].reset();
    } else if (expected_[i]) {
      w.missing.push_back(i);
    }
  }
  return w;
}

}  // namespace gradacc
