// ContributionLedger: the exactly-once record. For each worker it remembers
// which contribution keys were applied and to which window, so a retried
// push is recognised as a duplicate (acknowledged, never counted twice) and
// a key reused for another window is refused. Bounded: the newest
// `keep` keys per worker; an older duplicate is then seen as a stale push
// (still never counted). Exported into checkpoints so it survives restarts.
//
// Thread-compatible: LockedWindow guards it with the window mutex.
#ifndef GRADACC_SERVER_CONTRIBUTION_LEDGER_H_
#define GRADACC_SERVER_CONTRIBUTION_LEDGER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "google/protobuf/map.h"

namespace gradacc {

class ContributionLedger {
 public:
  enum class Seen { kNew, kDuplicate, kReused };
  struct Lookup {
    Seen seen = Seen::kNew;
    uint64_t window = 0;  // the window the key went into (kDuplicate, kReused)
  };

  ContributionLedger(uint32_t num_workers, size_t keep = 1024);

  // Has (worker, key) been applied, and to `window` or another one?
  Lookup Find(uint32_t worker, uint64_t key, uint64_t window) const;
  bool Holds(uint32_t worker, uint64_t key) const;
  void Record(uint32_t worker, uint64_t key, uint64_t window);
  // Keys applied to windows below `version` (the ones a checkpoint of that
  // version makes durable), and their restoration.
  void Export(uint32_t worker, uint64_t version, google::protobuf::Map<uint64_t, uint64_t>* out) const;
  void Import(uint32_t worker, const google::protobuf::Map<uint64_t, uint64_t>& keys);
  // Keys of `worker` applied to window `version` or later (those Export
  // leaves out).
  uint64_t CountFrom(uint32_t worker, uint64_t version) const;
  bool empty(uint32_t worker) const { return keys_[worker].empty(); }

 private:
  const size_t keep_;
  std::vector<std::map<uint64_t, uint64_t>> keys_;  // per worker: key -> window
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_CONTRIBUTION_LEDGER_H_
