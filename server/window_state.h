// WindowState: the window state machine of one job — the open window's
// number, membership, the exactly-once ledger and the window's slots, and
// the rules that tie them: who may join and when a newcomer's first window
// is, which pushes are new, duplicates, stale or refused, when a window is
// complete, and what the next window expects.
//
// It holds no buffers of its own beyond accepted slots, does no arithmetic
// and no I/O. Thread-compatible: LockedWindow guards it with the window
// mutex, held only for these short decisions.
#ifndef GRADACC_SERVER_WINDOW_STATE_H_
#define GRADACC_SERVER_WINDOW_STATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gradacc/v1/checkpoint.pb.h"
#include "gradacc/v1/control.pb.h"
#include "gradacc/v1/data.pb.h"
#include "common/data_plan.h"
#include "server/contribution_ledger.h"
#include "server/membership.h"
#include "server/window.h"

namespace gradacc {

// A push that reached a window already closed (or a duplicate): the step
// ledger notes it in that window's record.
struct LateNote {
  uint32_t worker = 0;
  uint64_t window = 0;
  uint64_t key = 0;
  const char* outcome = "";  // "duplicate" or "stale"
};

// What a join answers.
struct JoinOutcome {
  uint64_t version = 0;
  uint64_t first_window = 0;  // the window this worker contributes to first
};

// An accepted push.
struct Accepted {
  uint64_t window = 0;
  uint32_t received = 0;
  uint32_t expected = 0;
  std::optional<ClosingWindow> closing;  // set when it completed the window
};

class WindowState {
 public:
  WindowState(const v1::JobSpec* spec, uint32_t num_workers, absl::Time now);

  // Resumes from a checkpoint's state (membership, ledger, version,
  // counters).
  void Restore(const v1::CheckpointState& state, absl::Time now);
  // Writes membership, the keys applied below `version` and the counters
  // into `state`. Contributions to windows from `version` on (the open or
  // closing window, at a checkpoint at shutdown) are left out of every
  // count, as out of the keys: they are pushed and counted again after a
  // restart.
  void Export(uint64_t version, v1::CheckpointState* state) const;

  uint64_t version() const { return version_; }
  bool closing() const { return closing_; }
  bool stopping() const { return stopping_; }
  // total_steps reached, or (a data plan) the cursor reached its epochs.
  bool done() const { return version_ >= spec_->total_steps() || PlanDone(cursor_); }
  // Whether the job is done once the closing window's step is applied.
  bool DoneAfterClose() const {
    return version_ + 1 >= spec_->total_steps() || (planned() && PlanDone(CursorAfter(*spec_, plan_)));
  }
  // A job with a data plan (JobSpec.data_plan): the open window's plan, fixed
  // when it opened (or when a joiner took a window that had no members).
  bool planned() const { return HasDataPlan(*spec_); }
  const v1::WindowPlan& plan() const { return plan_; }
  void Stop() { stopping_ = true; }
  // A loss-scaling job: the open window's scale, which every push must
  // carry (PushHeader.loss_scale; 0 in other jobs).
  void set_loss_scale(float scale) { loss_scale_ = scale; }
  float loss_scale() const { return loss_scale_; }

  // Request must have passed RequestValidator::CheckJoin.
  absl::StatusOr<JoinOutcome> Join(const v1::JoinRequest& request, absl::Time now);
  // May complete the window (an elastic member left before contributing).
  absl::Status Leave(uint32_t worker, absl::Time now, std::optional<ClosingWindow>* closing);

  // Stateful checks of a push header (after RequestValidator): NOT_JOINED,
  // DUPLICATE, KEY_REUSED, JOB_DONE, STALE_WINDOW, WINDOW_NOT_OPEN,
  // PLAN_CHANGED, BAD_VALUE (loss_scale), SECOND_CONTRIBUTION,
  // NOT_A_MEMBER_YET, covers. `late` is set for
  // duplicates and stale pushes.
  absl::Status Admit(const v1::PushHeader& h, absl::Time now, std::optional<LateNote>* late);
  // Adds a complete push to the open window (the checks of Admit again: the
  // window may have moved while the data arrived).
  // `slot` is moved from only on success.
  absl::StatusOr<Accepted> Accept(const v1::PushHeader& h, Slot* slot, bool shared_memory, absl::Time now,
                                  std::optional<LateNote>* late);
  // The open window, handed over when complete (QUORUM: `deadline_passed`).
  std::optional<ClosingWindow> TakeIfComplete(bool deadline_passed);
  // QUORUM: whether the open window's deadline has passed at `now`.
  bool DeadlinePassed(absl::Time now) const;
  // The closing window's step is published: `new_version` is open.
  void Advance(uint64_t new_version, absl::Time now);
  // The closing window's step was abandoned (shutdown): its contributions
  // are not counted anywhere durable and will be pushed again.
  void Abandon() { closing_ = false; }

  // CONTRIBUTION_LOST when `worker` has no contribution with `key` here.
  absl::Status CheckHeld(uint32_t worker, uint64_t key) const;
  void CountRejected(uint32_t worker);

  const Membership& members() const { return members_; }
  Membership& members() { return members_; }
  const Window& window() const { return window_; }
  uint64_t accepted() const { return accepted_; }
  uint64_t duplicates() const { return duplicates_; }
  uint64_t stale() const { return stale_; }
  uint64_t rejected() const { return rejected_; }

 private:
  absl::Status CheckCovers(const v1::PushHeader& h) const;
  absl::Status CheckOpenWindow(const v1::PushHeader& h, std::optional<LateNote>* late);
  void RecordContribution(uint32_t worker, const v1::PushHeader& h, absl::Time now);
  std::vector<bool> ExpectedNext() const;
  // plan_ for the open window: its expected workers and cursor_.
  void Replan();
  bool PlanDone(EpochCursor c) const {
    return planned() && spec_->data_plan().epochs() > 0 && c.epoch >= spec_->data_plan().epochs();
  }
  // A joiner of a planned job: a member of the open window only while it
  // has none; else the next window is its first.
  void JoinPlanned(uint32_t worker, JoinOutcome* out);

  const v1::JobSpec* const spec_;
  Membership members_;
  ContributionLedger ledger_;
  Window window_;
  uint64_t version_ = 0;
  bool closing_ = false;
  bool stopping_ = false;
  float loss_scale_ = 0;
  uint64_t accepted_ = 0;
  uint64_t duplicates_ = 0;
  uint64_t stale_ = 0;
  uint64_t rejected_ = 0;
  EpochCursor cursor_;    // where the open window's samples start (data plan)
  v1::WindowPlan plan_;   // the open window's (data plan)
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_WINDOW_STATE_H_
