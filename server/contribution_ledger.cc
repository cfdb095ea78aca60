#include "server/contribution_ledger.h"

namespace gradacc {

ContributionLedger::ContributionLedger(uint32_t num_workers, size_t keep) : keep_(keep), keys_(num_workers) {}

ContributionLedger::Lookup ContributionLedger::Find(uint32_t worker, uint64_t key, uint64_t window) const {
  const auto& keys = keys_[worker];
  auto it = keys.find(key);
  if (it == keys.end()) return {};
  return {it->second == window ? Seen::kDuplicate : Seen::kReused, it->second};
}

bool ContributionLedger::Holds(uint32_t worker, uint64_t key) const { return keys_[worker].count(key) > 0; }

void ContributionLedger::Record(uint32_t worker, uint64_t key, uint64_t window) {
  auto& keys = keys_[worker];
  keys[key] = window;
  // Keys are numbered in increasing order: the smallest are the oldest.
  while (keys.size() > keep_) keys.erase(keys.begin());
}

void ContributionLedger::Export(uint32_t worker, uint64_t version,
                                google::protobuf::Map<uint64_t, uint64_t>* out) const {
  for (const auto& [key, window] : keys_[worker]) {
    // Keys of the open window are not durable: its contributions are not in
    // the checkpoint and get pushed again after a restart.
    if (window < version) (*out)[key] = window;
  }
}

uint64_t ContributionLedger::CountFrom(uint32_t worker, uint64_t version) const {
  uint64_t n = 0;
  for (const auto& [key, window] : keys_[worker]) n += window >= version ? 1 : 0;
  return n;
}

void ContributionLedger::Import(uint32_t worker, const google::protobuf::Map<uint64_t, uint64_t>& keys) {
  keys_[worker].insert(keys.begin(), keys.end());
}

}  // namespace gradacc
