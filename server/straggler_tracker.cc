#include "server/straggler_tracker.h"

#include <algorithm>

namespace gradacc {
namespace {

double Median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

StragglerTracker::StragglerTracker(uint32_t num_workers, uint32_t straggler_windows)
    : straggler_windows_(straggler_windows), late_(num_workers, 0) {
  last_.set_slowest_worker(-1);
}

bool StragglerTracker::straggler(uint32_t worker) const {
  return straggler_windows_ > 0 && late_[worker] >= straggler_windows_;
}

std::vector<uint32_t> StragglerTracker::stragglers() const {
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < late_.size(); ++i) {
    if (straggler(i)) out.push_back(i);
  }
  return out;
}

v1::WindowArrivals StragglerTracker::Observe(const ClosingWindow& window, std::vector<uint32_t>* new_stragglers) {
  const double closed = absl::ToDoubleSeconds(window.last_arrival - window.opened);
  std::vector<double> offsets;
  for (const Slot& slot : window.slots) offsets.push_back(absl::ToDoubleSeconds(slot.arrival - window.opened));
  const double median = Median(offsets);

  for (uint32_t w : window.workers) late_[w] = 0;
  for (uint32_t m : window.missing) {
    const bool was = straggler(m);
    ++late_[m];
    if (!was && straggler(m)) new_stragglers->push_back(m);
  }

  v1::WindowArrivals a;
  a.set_window(window.window);
  a.set_median_after_open_seconds(median);
  a.set_slowest_worker(-1);
  // In worker order: both lists are sorted.
  size_t i = 0, j = 0;
  while (i < window.workers.size() || j < window.missing.size()) {
    const bool take_present = j == window.missing.size() ||
                              (i < window.workers.size() && window.workers[i] < window.missing[j]);
    v1::WorkerArrival* wa = a.add_workers();
    if (take_present) {
      wa->set_worker(window.workers[i]);
      wa->set_after_open_seconds(offsets[i]);
      ++i;
    } else {
      wa->set_worker(window.missing[j]);
      wa->set_after_open_seconds(closed);
      wa->set_missing(true);
      ++j;
    }
    wa->set_behind_median_seconds(wa->after_open_seconds() - median);
  }
  // The slowest: a missing worker (late the most windows in a row, then the
  // lowest id), else the last to arrive (the lowest id among equals).
  const v1::WorkerArrival* slowest = nullptr;
  for (const v1::WorkerArrival& wa : a.workers()) {
    if (slowest == nullptr || wa.missing() > slowest->missing()) {
      slowest = &wa;
    } else if (wa.missing() == slowest->missing()) {
      const bool later = wa.missing() ? late_[wa.worker()] > late_[slowest->worker()]
                                      : wa.after_open_seconds() > slowest->after_open_seconds();
      if (later) slowest = &wa;
    }
  }
  if (slowest != nullptr && !window.slots.empty()) {
    a.set_slowest_worker(slowest->worker());
    a.set_slowest_behind_median_seconds(slowest->behind_median_seconds());
    a.set_slowest_missing(slowest->missing());
  }
  for (uint32_t s : stragglers()) a.add_stragglers(s);
  last_ = a;
  return a;
}

void StragglerTracker::Fill(v1::Status* status) const {
  *status->mutable_last_window_arrivals() = last_;
  for (uint32_t s : stragglers()) status->add_stragglers(s);
  status->set_straggler_windows(straggler_windows_);
}

}  // namespace gradacc
