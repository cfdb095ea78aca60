// Accumulator: the open window's running sum over the flat range this server
// owns, computed while the contributions arrive — in worker order, so the
// bits are those of summing the whole contributions at close:
//
//   acc = ((s0 + s1) + s2) + ...   (each element: copy, add, add, ...)
//
// The worker at the head of the order (the lowest one whose contribution is
// not in the sum yet) folds its chunks into the sum as they arrive, keeping
// each chunk's pre-image (the sum's values before it) until its push is
// accepted, so a push broken half-way is taken back out exactly. Chunks of
// workers further down the order wait in a staging pool of a fixed size;
// when it is full, their streams are parked (the reactor stops reading;
// gRPC's flow control holds the client) until the head moves on. A parked
// push whose head made no progress for `stall_limit` (a worker before it
// that does not push: a straggler, a dead worker, a client that pushes its
// workers one after the other) stops waiting: it takes a whole buffer of its
// own, as every push did before, and is added at its turn. Memory is then
// the sum, one head push's pre-images and the staging bound — whatever the
// number of workers — unless pushes stall.
//
// Accepted contributions move into the accumulator (Accepted) and are
// folded at their turn (Advance). Contributions that are whole buffers
// (shared-memory segments, pushes that stopped waiting) are folded only
// when a chunked one follows them; at close, Finish folds what it must and
// hands the step the running sum and the whole buffers after it, in order.
//
// Jobs whose membership may change mid-window (elastic, data plans) do not
// stream: every gRPC push gets a whole buffer and Finish hands them over in
// worker order, as before.
//
// Thread-safe; Push methods are called by the push's own stream (one thread
// at a time). Lock order: the window mutex (LockedWindow's), then this one. Wake
// functions run on the `schedule` thread, never under a lock.
#ifndef GRADACC_SERVER_ACCUMULATOR_H_
#define GRADACC_SERVER_ACCUMULATOR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/buffer.h"
#include "common/mutex.h"
#include "common/parallel.h"
#include "common/shm.h"
#include "server/buffer_pool.h"

namespace gradacc {

struct AccumulatorOptions {
  // Bytes of chunks that may wait for their turn (their workers are behind
  // the head of the order).
  size_t staging_bytes = size_t{32} << 20;
  // A parked push waits at most this long without the head making progress,
  // then takes a buffer of its own.
  absl::Duration stall_limit = absl::Seconds(1);
  // False: no running sum (elastic jobs, data plans): every push is a whole
  // buffer.
  bool streaming = true;
  size_t parallel_min_elements = kParallelMinElements;
};

struct AccumulatorStats {
  uint64_t staged_bytes = 0;       // now
  uint64_t staged_peak_bytes = 0;  // the most at once since construction
  uint64_t preimage_peak_bytes = 0;
  uint64_t parked = 0;   // times a push was parked
  uint64_t spilled = 0;  // pushes that stopped waiting
  uint64_t folded = 0;   // contributions folded into running sums
};

// What a closing window reduces, in worker order: the running sum of the
// contributions folded so far (worker -1), then whole buffers. Valid until
// the next Open.
struct WindowSources {
  std::vector<const float*> data;
  std::vector<int64_t> worker;
  // The running sum when it is the only source (the step may reduce it in
  // place); else null.
  float* only_running_sum = nullptr;
  // Whole buffers folded into the running sum (shared-memory segments, whose
  // chunks nobody measured): each worker's sum of squares, for the ledger.
  std::vector<std::pair<uint32_t, double>> folded_squares;
};

class Accumulator {
 public:
  // `schedule(when, fn)` runs fn at `when` on another thread.
  using Schedule = std::function<void(absl::Time, std::function<void()>)>;

  // One gRPC push's data, from its header to its acceptance. Destroying it
  // before Accepted takes it back out of the running sum.
  class Push {
   public:
    enum class Outcome { kReady, kParked, kClosed };
    ~Push();
    Push(const Push&) = delete;
    Push& operator=(const Push&) = delete;

    // Where the `n` elements at `offset` (local to the range) are to be
    // written: kReady with `*dst`; kParked (nothing reserved; `wake` runs
    // when it may be worth asking again); kClosed (the window closed
    // without this push). A null `wake` never parks.
    Outcome Reserve(uint64_t offset, size_t n, std::function<void()> wake, absl::Span<float>* dst);
    // The reserved chunk was written and is valid: it joins the push (and,
    // at the head, the running sum). False: the window closed meanwhile.
    bool Place();
    uint32_t worker() const { return worker_; }

   private:
    friend class Accumulator;
    enum class Mode { kStaged, kHead, kFlat, kDrain, kAccepted, kClosed };
    struct Chunk {
      uint64_t offset = 0;
      size_t n = 0;
      std::unique_ptr<float[]> data;
    };
    Push(Accumulator* owner, uint32_t worker, uint64_t window) : owner_(owner), worker_(worker), window_(window) {}

    // All guarded by owner_->mu_ (pending_'s and flat_'s contents are the
    // stream's own while it writes them).
    Accumulator* const owner_;
    const uint32_t worker_;
    const uint64_t window_;
    Mode mode_ = Mode::kStaged;
    bool first_ = false;            // kHead: nothing was folded before it (copies, no pre-images)
    std::vector<Chunk> chunks_;     // kStaged: waiting; kHead: pre-images
    Chunk pending_;                 // reserved, not placed yet
    bool pending_counted_ = false;  // pending_ counts toward the staging bound
    FloatBuffer flat_;              // kFlat
    std::unique_ptr<float[]> drain_;
    size_t drain_size_ = 0;
    std::function<void()> wake_;
    absl::Time parked_since_ = absl::InfinitePast();
  };

  Accumulator(size_t elements, uint32_t num_workers, AccumulatorOptions options, BufferPool* pool, Schedule schedule);
  ~Accumulator();
  Accumulator(const Accumulator&) = delete;
  Accumulator& operator=(const Accumulator&) = delete;

  // Window `window` opens (under the window mutex: LockedWindow::Advance): what the
  // previous one held is released.
  void Open(uint64_t window);
  // A push's header was admitted for `window`.
  std::unique_ptr<Push> Begin(uint32_t worker, uint64_t window);
  // The window accepted `push` (under the window mutex): its data belongs
  // to the window now; `covers` contribute through it.
  void Accepted(Push* push, absl::Span<const uint32_t> covers);
  // The same for a contribution that is a whole buffer elsewhere (a
  // shared-memory segment, kept alive by `keep`).
  void AcceptedView(uint32_t worker, const float* data, std::shared_ptr<ShmSegment> keep,
                    absl::Span<const uint32_t> covers);
  // Folds what is ready (outside the window mutex: this is where the adds
  // of whole staged contributions happen).
  void Advance();
  // The window closes with the contributions accepted so far: pushes still
  // in flight are taken out, what must be folded is, and the sources are
  // returned (trainer thread).
  WindowSources Finish(uint64_t window);

  AccumulatorStats stats() const;
  const AccumulatorOptions& options() const { return options_; }

 private:
  enum class State { kPending, kEmpty, kReady, kFolded };
  struct Position {
    State state = State::kPending;
    std::vector<Push::Chunk> chunks;  // kReady: a staged contribution
    FloatBuffer flat;                 // kReady: a push that stopped waiting
    const float* view = nullptr;      // kReady: a whole buffer (flat's or a segment's)
    std::shared_ptr<ShmSegment> segment;
    std::vector<Push*> live;  // pushes in flight for this worker
    bool unmeasured = false;  // an AcceptedView buffer: no chunk measured it
    std::optional<double> squares;  // its sum of squares, once folded
  };
  using Wakes = std::vector<std::function<void()>>;

  Push::Outcome ReserveLocked(Push* p, uint64_t offset, size_t n, std::function<void()> wake, absl::Span<float>* dst,
                              absl::Time* park_until, Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool PlaceLocked(Push* p, Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLocked(Push* p, Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Folds ready positions from the head and promotes the next head push.
  void FoldReady(Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FoldPosition(Position& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // acc[offset, offset + n) = data (nothing folded yet) or += data; with
  // `keep`, data gets the sum's old values (the pre-image).
  void FoldChunk(uint64_t offset, size_t n, float* data, bool keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Promote(Push* p, Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Spill(Push* p, Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The push leaves its position: its data is released (a head's pre-images
  // restored) and it becomes `mode`.
  void Detach(Push* p, Push::Mode mode, Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool ChunkedAfter(uint32_t worker) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Current(const Push* p) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !closed_ && p->window_ == window_ && p->mode_ != Push::Mode::kClosed;
  }
  void Count(int64_t staged, int64_t preimage) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CollectParked(Wakes* wakes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunWakes(Wakes wakes);
  void ReleasePosition(Position& p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t elements_;
  const uint32_t num_workers_;
  const AccumulatorOptions options_;
  BufferPool* const pool_;
  const Schedule schedule_;

  mutable Mutex mu_;
  FloatBuffer acc_ ABSL_GUARDED_BY(mu_);  // allocated by the first fold
  uint64_t window_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Position> pos_ ABSL_GUARDED_BY(mu_);
  uint32_t head_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t folded_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_progress_ ABSL_GUARDED_BY(mu_);
  uint64_t staged_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t preimage_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // The stall timer (one for all parked pushes) is scheduled, due then.
  bool stall_timer_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time stall_timer_due_ ABSL_GUARDED_BY(mu_);
  AccumulatorStats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_ACCUMULATOR_H_
