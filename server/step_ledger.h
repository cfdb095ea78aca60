// StepLedger: what the server did in each step (v1::StepRecord): the last
// 4096 records in memory for GetSteps, and every record appended to a JSON
// lines file (a later line for the same step supersedes an earlier one) by a
// writer thread of its own, so file I/O never runs under a lock that a push
// or a pull waits on. The file is created 0600.
//
// A record is appended after its step is durable, so a server killed in
// between would lose it from the file for good: the checkpoint therefore
// carries the records not yet written (Unlogged), and a resumed server
// appends those the file lacks (Recover) before it serves.
//
// Thread-safe. The destructor writes what is queued, then stops.
#ifndef GRADACC_SERVER_STEP_LEDGER_H_
#define GRADACC_SERVER_STEP_LEDGER_H_

#include <cstdint>
#include <cstdio>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "common/env.h"
#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "server/window_state.h"

namespace gradacc {

class StepLedger {
 public:
  // `path` empty: in memory only. The file is appended through `env` (null:
  // the real file system).
  explicit StepLedger(std::string path, Env* env = nullptr);
  ~StepLedger();
  StepLedger(const StepLedger&) = delete;
  StepLedger& operator=(const StepLedger&) = delete;

  void Append(v1::StepRecord record);
  // Appends the records of `records` whose step the file has no line for,
  // marked `recovered`, and waits until they are written. Call before the
  // first Append. Returns the steps appended.
  std::vector<uint64_t> Recover(const google::protobuf::RepeatedPtrField<v1::StepRecord>& records);
  // The appended records whose line is not in the file yet.
  std::vector<v1::StepRecord> Unlogged() const;
  // A push that came after its window closed: counted in that window's
  // record, which is written again.
  void NoteLate(const LateNote& late);
  // Records with from <= step <= to (0 = open end).
  v1::GetStepsResponse Get(uint64_t from, uint64_t to) const;
  // Blocks until every record appended so far is in the file, at most 30 s:
  // a write that fails (a full disk, a missing folder) keeps its lines
  // queued and is retried with backoff (0.5 s to 10 s; the log says LEDGER
  // WRITE FAILED once), and the checkpoints carry them meanwhile.
  void Flush();

 private:
  void WriterLoop();

  const std::string path_;
  Env* const env_;
  mutable Mutex mu_;
  std::deque<v1::StepRecord> records_ ABSL_GUARDED_BY(mu_);
  struct Line {
    std::string text;
    bool append = false;  // an Append's line (not a rewrite for a late push)
  };
  std::deque<Line> unwritten_ ABSL_GUARDED_BY(mu_);  // JSON lines for the writer
  std::deque<uint64_t> unlogged_ ABSL_GUARDED_BY(mu_);  // steps of Appends not yet written, in order
  uint64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread writer_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_STEP_LEDGER_H_
