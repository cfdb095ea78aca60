#include "server/checkpointer.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/files.h"
#include "common/log.h"
#include "server/checkpoint.h"

namespace gradacc {
namespace {

constexpr char kMarker[] = "JOB";
constexpr char kRestarts[] = "RESTARTS";

}  // namespace

Checkpointer::Checkpointer(CheckpointOptions options, const ModelLayout* layout)
    : options_(std::move(options)), layout_(layout) {}

bool Checkpointer::Due(uint64_t version, bool job_done) const {
  return enabled() && (job_done || version % std::max<uint64_t>(1, options_.every) == 0);
}

absl::Status Checkpointer::Write(const v1::CheckpointState& state, absl::Span<const float> params,
                                 const std::vector<std::pair<std::string, const FloatBuffer*>>& optimizer,
                                 const std::function<void()>& before_rename) {
  absl::Status s =
      WriteCheckpoint(options_.dir, *layout_, state, params, optimizer, options_.keep, before_rename, options_.env);
  bool mark = false;
  {
    MutexLock lock(&mu_);
    if (s.ok()) {
      if (!healthy_) {
        GRADACC_LOG(INFO, "checkpoints work again (version %d is durable); publishing resumes", state.version());
      }
      healthy_ = true;
      error_.clear();
      failing_since_ = absl::InfinitePast();
      pending_ = 0;
      last_version_ = state.version();
      last_time_ = absl::Now();
      mark = !marked_;
      marked_ = true;
    } else {
      if (healthy_) failing_since_ = absl::Now();
      healthy_ = false;
      // In the same change as healthy_: status never shows a failure
      // without the version it holds back.
      pending_ = state.version();
      // Status is readable by any reader-token holder: no server paths.
      error_ = absl::StrReplaceAll(s.message(), {{options_.dir, "<checkpoint_dir>"}});
      ++failures_;
      GRADACC_LOG(WARNING,
                  "CHECKPOINT FAILED for version %d: %s; version %d is not published until a "
                  "checkpoint succeeds (retrying)",
                  state.version(), s.message(), state.version());
    }
  }
  if (mark) {
    // The folder has held a checkpoint of this job from now on.
    absl::Status m =
        WriteFileAtomically(absl::StrCat(options_.dir, "/", kMarker), state.job().job_id() + "\n", options_.env);
    if (!m.ok()) GRADACC_LOG(WARNING, "cannot write %s/%s: %s", options_.dir, kMarker, m.message());
  }
  return s;
}

v1::CheckpointHealth Checkpointer::health() const {
  MutexLock lock(&mu_);
  v1::CheckpointHealth h;
  h.set_healthy(healthy_);
  h.set_error(error_);
  h.set_failures(failures_);
  h.set_failing_since_unix_micros(healthy_ ? 0 : absl::ToUnixMicros(failing_since_));
  h.set_pending_version(pending_);
  return h;
}

bool Checkpointer::healthy() const {
  MutexLock lock(&mu_);
  return healthy_;
}

uint64_t Checkpointer::last_version() const {
  MutexLock lock(&mu_);
  return last_version_;
}

absl::Time Checkpointer::last_time() const {
  MutexLock lock(&mu_);
  return last_time_;
}

void Checkpointer::Restored(uint64_t version, absl::Time written) {
  MutexLock lock(&mu_);
  last_version_ = version;
  last_time_ = written;
  marked_ = true;
}

absl::Status Checkpointer::CheckFreshStart(const std::string& dir, const std::string& ledger_path) {
  if (!dir.empty()) {
    auto marker = ReadFileToString(absl::StrCat(dir, "/", kMarker));
    if (marker.ok()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "checkpoint folder '%s' held checkpoints of job '%s' but none is left that loads: refusing to start "
          "the job over (its workers may hold later versions). Restore the checkpoints, or move the folder "
          "away to really start afresh",
          dir, std::string(absl::StripTrailingAsciiWhitespace(*marker))));
    }
  }
  if (!ledger_path.empty()) {
    auto ledger = ReadFileToString(ledger_path);
    if (ledger.ok() && !ledger->empty()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "the step ledger '%s' already records steps of a run, but no checkpoint to resume from was found: "
          "refusing to start the job over. Restore the checkpoints, or move the ledger away to start afresh",
          ledger_path));
    }
  }
  return absl::OkStatus();
}

uint32_t Checkpointer::CountResume(const std::string& dir, uint32_t in_checkpoint) {
  const std::string path = absl::StrCat(dir, "/", kRestarts);
  uint32_t counted = 0;
  if (auto text = ReadFileToString(path); text.ok()) {
    (void)absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &counted);
  }
  const uint32_t restarts = std::max(counted, in_checkpoint) + 1;
  if (absl::Status s = WriteFileAtomically(path, absl::StrCat(restarts, "\n")); !s.ok()) {
    GRADACC_LOG(WARNING, "cannot count this restart in %s: %s", path, s.message());
  }
  return restarts;
}

}  // namespace gradacc
