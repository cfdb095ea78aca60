// Checkpointer: when and where the trainer makes its state durable, and
// what it remembers when that fails.
//
// A failed write is sticky (as leveldb's background error): the trainer
// publishes no version until a write succeeds, so no worker ever holds a
// version the server could lose. The failure shows in status, metrics and
// the log, and the trainer retries with backoff; the job resumes by itself
// when the disk has room again.
//
// Once a checkpoint was written the folder holds a marker (JOB) naming the
// job: a later start that finds the marker but no usable checkpoint refuses
// to start over (CheckStart), as does one whose ledger already has steps.
// Every resume is counted in a file of its own (RESTARTS), written when the
// server resumes, so resumes killed before their first checkpoint count too.
//
// Thread-safe: Write is called by the trainer thread; health() from any.
#ifndef GRADACC_SERVER_CHECKPOINTER_H_
#define GRADACC_SERVER_CHECKPOINTER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/buffer.h"
#include "common/env.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "gradacc/v1/checkpoint.pb.h"
#include "gradacc/v1/control.pb.h"

namespace gradacc {

struct CheckpointOptions {
  std::string dir;  // empty = no checkpoints
  uint64_t every = 1;
  int keep = 3;
  Env* env = nullptr;  // every file operation (null: the real file system)
};

class Checkpointer {
 public:
  Checkpointer(CheckpointOptions options, const ModelLayout* layout);

  bool enabled() const { return !options_.dir.empty(); }
  // Whether version `version` must be durable before it is published.
  bool Due(uint64_t version, bool job_done) const;
  // Writes a checkpoint of `state` (its version) with the parameters and
  // optimizer state; records success or the (sticky) failure, and with a
  // failure that `state`'s version waits for its checkpoint.
  // `before_rename`: see WriteCheckpoint (a failpoint).
  absl::Status Write(const v1::CheckpointState& state, absl::Span<const float> params,
                     const std::vector<std::pair<std::string, const FloatBuffer*>>& optimizer,
                     const std::function<void()>& before_rename = nullptr);
  v1::CheckpointHealth health() const;
  bool healthy() const;
  uint64_t last_version() const;
  absl::Time last_time() const;
  void Restored(uint64_t version, absl::Time written);

  // Refuses (FAILED_PRECONDITION, saying why loudly) to start a job afresh
  // in a checkpoint folder that held checkpoints of it before, or when the
  // ledger file already records steps. Call only when no checkpoint loaded.
  static absl::Status CheckFreshStart(const std::string& dir, const std::string& ledger_path);
  // A resume from a checkpoint that counted `in_checkpoint` restarts: the
  // number of resumes of this job so far, this one included (the larger of
  // the checkpoint's count and the RESTARTS file's, plus one), written back
  // to RESTARTS atomically. A failed write is reported on stderr.
  static uint32_t CountResume(const std::string& dir, uint32_t in_checkpoint);

 private:
  const CheckpointOptions options_;
  const ModelLayout* const layout_;
  mutable Mutex mu_;
  bool healthy_ ABSL_GUARDED_BY(mu_) = true;
  std::string error_ ABSL_GUARDED_BY(mu_);
  uint64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time failing_since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t pending_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_version_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_time_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool marked_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_CHECKPOINTER_H_
