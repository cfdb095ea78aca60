#include "server/accumulator.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "common/kernels.h"
#include "common/log.h"

namespace gradacc {
namespace {

uint64_t Bytes(size_t n) { return static_cast<uint64_t>(n) * sizeof(float); }

void Erase(std::vector<Accumulator::Push*>& v, const Accumulator::Push* p) {
  auto it = std::find(v.begin(), v.end(), p);
  if (it != v.end()) v.erase(it);
}

}  // namespace

Accumulator::Accumulator(size_t elements, uint32_t num_workers, AccumulatorOptions options, BufferPool* pool,
                         Schedule schedule)
    : elements_(elements), num_workers_(num_workers), options_(options), pool_(pool), schedule_(std::move(schedule)) {
  MutexLock lock(&mu_);
  pos_.resize(num_workers_);
  last_progress_ = absl::Now();
}

Accumulator::~Accumulator() {
  MutexLock lock(&mu_);
  for (Position& p : pos_) {
    // Pushes outliving the accumulator would be a bug of their owner; they
    // find it closed.
    for (Push* push : p.live) push->mode_ = Push::Mode::kClosed;
    p.live.clear();
    ReleasePosition(p);
  }
}

// --- pushes -------------------------------------------------------------

Accumulator::Push::~Push() {
  Wakes wakes;
  {
    MutexLock lock(&owner_->mu_);
    owner_->ReleaseLocked(this, &wakes);
  }
  owner_->RunWakes(std::move(wakes));
}

Accumulator::Push::Outcome Accumulator::Push::Reserve(uint64_t offset, size_t n, std::function<void()> wake,
                                                      absl::Span<float>* dst) {
  Wakes wakes;
  absl::Time park_until = absl::InfiniteFuture();
  Outcome outcome;
  {
    MutexLock lock(&owner_->mu_);
    outcome = owner_->ReserveLocked(this, offset, n, std::move(wake), dst, &park_until, &wakes);
  }
  if (outcome == Outcome::kParked && park_until != absl::InfiniteFuture() && owner_->schedule_ != nullptr) {
    Accumulator* owner = owner_;
    owner_->schedule_(park_until, [owner] {
      Wakes parked;
      {
        MutexLock lock(&owner->mu_);
        owner->stall_timer_ = false;
        owner->CollectParked(&parked);
      }
      owner->RunWakes(std::move(parked));
    });
  }
  owner_->RunWakes(std::move(wakes));
  return outcome;
}

bool Accumulator::Push::Place() {
  Wakes wakes;
  bool placed;
  {
    MutexLock lock(&owner_->mu_);
    placed = owner_->PlaceLocked(this, &wakes);
  }
  owner_->RunWakes(std::move(wakes));
  return placed;
}

std::unique_ptr<Accumulator::Push> Accumulator::Begin(uint32_t worker, uint64_t window) {
  std::unique_ptr<Push> p(new Push(this, worker, window));
  // Outside the lock: a whole buffer may be a fresh allocation.
  if (!options_.streaming) p->flat_ = pool_->Take();
  MutexLock lock(&mu_);
  if (closed_ || window != window_ || worker >= pos_.size()) {
    p->mode_ = Push::Mode::kClosed;
    return p;
  }
  if (!options_.streaming) p->mode_ = Push::Mode::kFlat;
  pos_[worker].live.push_back(p.get());
  return p;
}

Accumulator::Push::Outcome Accumulator::ReserveLocked(Push* p, uint64_t offset, size_t n, std::function<void()> wake,
                                                      absl::Span<float>* dst, absl::Time* park_until, Wakes* wakes) {
  if (!Current(p)) {
    p->mode_ = Push::Mode::kClosed;
    return Push::Outcome::kClosed;
  }
  if (p->mode_ == Push::Mode::kStaged && pos_[p->worker_].state != State::kPending) {
    // Another push of this worker was accepted: this one is a duplicate (or
    // a second contribution) and is refused when it completes; its data is
    // read and dropped meanwhile.
    Detach(p, Push::Mode::kDrain, wakes);
  }
  if (p->mode_ == Push::Mode::kFlat) {
    *dst = p->flat_.span().subspan(offset, n);
    return Push::Outcome::kReady;
  }
  if (p->mode_ == Push::Mode::kDrain) {
    if (p->drain_size_ < n) {
      p->drain_.reset(new float[n]);
      p->drain_size_ = n;
    }
    *dst = absl::MakeSpan(p->drain_.get(), n);
    return Push::Outcome::kReady;
  }
  if (p->mode_ == Push::Mode::kStaged && head_ <= p->worker_) FoldReady(wakes);
  const uint64_t bytes = Bytes(n);
  if (p->mode_ == Push::Mode::kStaged && staged_bytes_ + bytes > options_.staging_bytes) {
    const absl::Time now = absl::Now();
    const bool stalled = p->parked_since_ != absl::InfinitePast() &&
                         now - std::max(p->parked_since_, last_progress_) >= options_.stall_limit;
    if (wake == nullptr || stalled) {
      Spill(p, wakes);
      *dst = p->flat_.span().subspan(offset, n);
      return Push::Outcome::kReady;
    }
    if (p->parked_since_ == absl::InfinitePast()) p->parked_since_ = now;
    p->wake_ = std::move(wake);
    ++stats_.parked;
    // One timer for all parked pushes: it wakes them, and each checks its
    // own stall.
    const absl::Time due = std::max(p->parked_since_, last_progress_) + options_.stall_limit;
    if (!stall_timer_ || due < stall_timer_due_) {
      stall_timer_ = true;
      stall_timer_due_ = due;
      *park_until = due;
    }
    return Push::Outcome::kParked;
  }
  p->pending_ = Push::Chunk{offset, n, std::unique_ptr<float[]>(new float[n])};
  if (p->mode_ == Push::Mode::kStaged) {
    Count(static_cast<int64_t>(bytes), 0);
    p->pending_counted_ = true;
    p->parked_since_ = absl::InfinitePast();
  }
  *dst = absl::MakeSpan(p->pending_.data.get(), n);
  return Push::Outcome::kReady;
}

bool Accumulator::PlaceLocked(Push* p, Wakes* wakes) {
  if (!Current(p)) {
    if (p->pending_counted_) Count(-static_cast<int64_t>(Bytes(p->pending_.n)), 0);
    p->pending_counted_ = false;
    p->pending_ = {};
    p->mode_ = Push::Mode::kClosed;
    return false;
  }
  switch (p->mode_) {
    case Push::Mode::kFlat:
    case Push::Mode::kDrain:
      return true;
    case Push::Mode::kHead: {
      // Reserved while staged, promoted since: it no longer waits.
      if (p->pending_counted_) {
        Count(-static_cast<int64_t>(Bytes(p->pending_.n)), 0);
        p->pending_counted_ = false;
        CollectParked(wakes);
      }
      Push::Chunk c = std::move(p->pending_);
      FoldChunk(c.offset, c.n, c.data.get(), /*keep=*/!p->first_);
      if (!p->first_) {
        Count(0, static_cast<int64_t>(Bytes(c.n)));
        p->chunks_.push_back(std::move(c));
      }
      last_progress_ = absl::Now();
      return true;
    }
    case Push::Mode::kStaged:
      p->pending_counted_ = false;  // counted as staged from now on
      p->chunks_.push_back(std::move(p->pending_));
      return true;
    default:
      return false;
  }
}

void Accumulator::ReleaseLocked(Push* p, Wakes* wakes) {
  if (p->mode_ != Push::Mode::kAccepted) {
    const bool current = Current(p);
    Detach(p, Push::Mode::kClosed, wakes);
    // Another attempt of this worker may take the head now.
    if (current) FoldReady(wakes);
  }
  p->pending_ = {};
  p->drain_.reset();
  if (p->flat_.size() != 0) pool_->Return(std::move(p->flat_));
}

void Accumulator::Detach(Push* p, Push::Mode mode, Wakes* wakes) {
  if (p->mode_ == Push::Mode::kHead && !p->first_) {
    // Exactly as before: the sum's values from before this push's chunks.
    for (const Push::Chunk& c : p->chunks_) {
      std::memcpy(acc_.data() + c.offset, c.data.get(), Bytes(c.n));
      Count(0, -static_cast<int64_t>(Bytes(c.n)));
    }
  } else if (p->mode_ == Push::Mode::kStaged) {
    for (const Push::Chunk& c : p->chunks_) Count(-static_cast<int64_t>(Bytes(c.n)), 0);
  }
  // A first head leaves only its own partial data in the sum, which the
  // next first contribution overwrites (every push covers every element).
  p->chunks_.clear();
  if (p->pending_counted_) Count(-static_cast<int64_t>(Bytes(p->pending_.n)), 0);
  p->pending_counted_ = false;
  if (p->window_ == window_) Erase(pos_[p->worker_].live, p);
  if (p->wake_ != nullptr) wakes->push_back(std::move(p->wake_));
  p->wake_ = nullptr;
  p->mode_ = mode;
  if (mode == Push::Mode::kDrain && p->window_ == window_) pos_[p->worker_].live.push_back(p);
  CollectParked(wakes);
}

void Accumulator::Spill(Push* p, Wakes* wakes) {
  p->flat_ = pool_->Take();
  for (const Push::Chunk& c : p->chunks_) {
    std::memcpy(p->flat_.data() + c.offset, c.data.get(), Bytes(c.n));
    Count(-static_cast<int64_t>(Bytes(c.n)), 0);
  }
  p->chunks_.clear();
  p->mode_ = Push::Mode::kFlat;
  if (p->parked_since_ != absl::InfinitePast()) {
    GRADACC_LOG(WARNING,
                "window %d: worker %d's push waited %d ms for its turn behind worker %d, which made no progress (a "
                "straggler?); it takes a model-sized buffer of its own (--stall_ms)",
                window_, p->worker_, absl::ToInt64Milliseconds(absl::Now() - p->parked_since_), head_);
  }
  p->parked_since_ = absl::InfinitePast();
  ++stats_.spilled;
  CollectParked(wakes);
}

// --- the window ---------------------------------------------------------

void Accumulator::Open(uint64_t window) {
  Wakes wakes;
  {
    MutexLock lock(&mu_);
    for (Position& p : pos_) {
      const std::vector<Push*> live = p.live;
      for (Push* push : live) Detach(push, Push::Mode::kClosed, &wakes);
      p.live.clear();
      ReleasePosition(p);
    }
    window_ = window;
    closed_ = false;
    head_ = 0;
    folded_ = 0;
    last_progress_ = absl::Now();
  }
  RunWakes(std::move(wakes));
}

void Accumulator::ReleasePosition(Position& p) {
  for (const Push::Chunk& c : p.chunks) Count(-static_cast<int64_t>(Bytes(c.n)), 0);
  p.chunks.clear();
  if (p.flat.size() != 0) pool_->Return(std::move(p.flat));
  p.flat = FloatBuffer();
  p.view = nullptr;
  p.segment.reset();
  p.squares.reset();
  p.unmeasured = false;
  p.state = State::kPending;
}

void Accumulator::Accepted(Push* push, absl::Span<const uint32_t> covers) {
  Wakes wakes;
  {
    MutexLock lock(&mu_);
    GRADACC_CHECK_MSG(Current(push) && pos_[push->worker_].state == State::kPending,
                      "worker %d's push accepted by window %d but not pending in the accumulator's window %d",
                      push->worker_, push->window_, window_);
    Position& pos = pos_[push->worker_];
    Erase(pos.live, push);
    switch (push->mode_) {
      case Push::Mode::kHead:
        // Complete and accepted: its pre-images are no longer needed.
        for (const Push::Chunk& c : push->chunks_) Count(0, -static_cast<int64_t>(Bytes(c.n)));
        push->chunks_.clear();
        pos.state = State::kFolded;
        ++folded_;
        ++stats_.folded;
        last_progress_ = absl::Now();
        break;
      case Push::Mode::kStaged:
        pos.chunks = std::move(push->chunks_);
        push->chunks_.clear();
        pos.state = State::kReady;
        break;
      case Push::Mode::kFlat:
        pos.flat = std::move(push->flat_);
        pos.view = pos.flat.data();
        pos.state = State::kReady;
        break;
      default:
        GRADACC_CHECK_MSG(false, "a push in mode %d was accepted", static_cast<int>(push->mode_));
    }
    push->mode_ = Push::Mode::kAccepted;
    const std::vector<Push*> others = pos.live;
    for (Push* other : others) Detach(other, Push::Mode::kDrain, &wakes);
    for (uint32_t c : covers) {
      if (c < pos_.size() && pos_[c].state == State::kPending) pos_[c].state = State::kEmpty;
    }
  }
  RunWakes(std::move(wakes));
}

void Accumulator::AcceptedView(uint32_t worker, const float* data, std::shared_ptr<ShmSegment> keep,
                               absl::Span<const uint32_t> covers) {
  Wakes wakes;
  {
    MutexLock lock(&mu_);
    GRADACC_CHECK_MSG(!closed_ && worker < pos_.size() && pos_[worker].state == State::kPending,
                      "worker %d's segment accepted but not pending in the accumulator", worker);
    Position& pos = pos_[worker];
    pos.view = data;
    pos.segment = std::move(keep);
    pos.unmeasured = true;
    pos.state = State::kReady;
    const std::vector<Push*> others = pos.live;
    for (Push* other : others) Detach(other, Push::Mode::kDrain, &wakes);
    for (uint32_t c : covers) {
      if (c < pos_.size() && pos_[c].state == State::kPending) pos_[c].state = State::kEmpty;
    }
  }
  RunWakes(std::move(wakes));
}

void Accumulator::Advance() {
  Wakes wakes;
  {
    MutexLock lock(&mu_);
    FoldReady(&wakes);
  }
  RunWakes(std::move(wakes));
}

bool Accumulator::ChunkedAfter(uint32_t worker) const {
  for (size_t i = worker + 1; i < pos_.size(); ++i) {
    const Position& p = pos_[i];
    if (p.state == State::kReady && !p.chunks.empty()) return true;
    for (const Push* live : p.live) {
      if (live->mode_ == Push::Mode::kStaged) return true;
    }
  }
  return false;
}

void Accumulator::FoldReady(Wakes* wakes) {
  if (!options_.streaming || closed_) return;
  while (head_ < pos_.size()) {
    Position& p = pos_[head_];
    if (p.state == State::kEmpty || p.state == State::kFolded) {
      ++head_;
      continue;
    }
    if (p.state == State::kReady) {
      // A whole buffer waits for the fused close unless a chunked
      // contribution must pass it.
      if (p.chunks.empty() && !ChunkedAfter(head_)) return;
      FoldPosition(p);
      last_progress_ = absl::Now();
      CollectParked(wakes);
      continue;
    }
    for (const Push* live : p.live) {
      if (live->mode_ == Push::Mode::kHead) return;
    }
    for (Push* live : p.live) {
      if (live->mode_ == Push::Mode::kStaged) {
        Promote(live, wakes);
        return;
      }
    }
    return;
  }
}

void Accumulator::Promote(Push* p, Wakes* wakes) {
  p->first_ = folded_ == 0;
  for (Push::Chunk& c : p->chunks_) {
    FoldChunk(c.offset, c.n, c.data.get(), /*keep=*/!p->first_);
    Count(-static_cast<int64_t>(Bytes(c.n)), p->first_ ? 0 : static_cast<int64_t>(Bytes(c.n)));
  }
  if (p->first_) p->chunks_.clear();
  p->mode_ = Push::Mode::kHead;
  p->parked_since_ = absl::InfinitePast();
  if (p->wake_ != nullptr) wakes->push_back(std::move(p->wake_));
  p->wake_ = nullptr;
  last_progress_ = absl::Now();
  CollectParked(wakes);
}

void Accumulator::FoldPosition(Position& p) {
  if (!p.chunks.empty()) {
    for (Push::Chunk& c : p.chunks) {
      FoldChunk(c.offset, c.n, c.data.get(), /*keep=*/false);
      Count(-static_cast<int64_t>(Bytes(c.n)), 0);
    }
    p.chunks.clear();
  } else {
    if (acc_.size() != elements_) acc_ = FloatBuffer(elements_);
    const float* src = p.view;
    // A segment's chunks were never measured: the ledger's norm, here.
    if (p.unmeasured) p.squares = SumOfSquaresParallel(absl::MakeConstSpan(src, elements_));
    float* acc = acc_.data();
    const bool first = folded_ == 0;
    ParallelFor(
        elements_,
        [&](size_t b, size_t e) {
          if (first) {
            std::memcpy(acc + b, src + b, Bytes(e - b));
          } else {
            float* __restrict a = acc + b;
            const float* __restrict s = src + b;
            for (size_t i = 0; i < e - b; ++i) a[i] += s[i];
          }
        },
        options_.parallel_min_elements);
  }
  if (p.flat.size() != 0) pool_->Return(std::move(p.flat));
  p.flat = FloatBuffer();
  p.view = nullptr;
  p.segment.reset();
  p.state = State::kFolded;
  ++folded_;
  ++stats_.folded;
}

void Accumulator::FoldChunk(uint64_t offset, size_t n, float* data, bool keep) {
  if (acc_.size() != elements_) acc_ = FloatBuffer(elements_);
  float* __restrict a = acc_.data() + offset;
  float* __restrict d = data;
  if (folded_ == 0) {
    // The first contribution: copied, as the sum in order copies s0.
    std::memcpy(a, d, Bytes(n));
  } else if (keep) {
    for (size_t i = 0; i < n; ++i) {
      const float old = a[i];
      a[i] = old + d[i];
      d[i] = old;
    }
  } else {
    for (size_t i = 0; i < n; ++i) a[i] += d[i];
  }
}

WindowSources Accumulator::Finish(uint64_t window) {
  Wakes wakes;
  WindowSources out;
  {
    MutexLock lock(&mu_);
    GRADACC_CHECK_MSG(window == window_ && !closed_, "finishing window %d; the accumulator is at %d (closed: %s)",
                      window, window_, closed_ ? "yes" : "no");
    // Pushes still in flight are not part of this window: a head's chunks
    // come back out of the sum first, before anything after it is folded.
    for (Position& p : pos_) {
      const std::vector<Push*> live = p.live;
      for (Push* push : live) Detach(push, Push::Mode::kClosed, &wakes);
      p.live.clear();
      if (p.state == State::kPending) p.state = State::kEmpty;  // absent
    }
    // Fold up to the last chunked contribution; whole buffers after it are
    // reduced by the step itself.
    size_t last = 0;
    bool chunked = false;
    for (size_t i = 0; i < pos_.size(); ++i) {
      if (pos_[i].state == State::kReady && !pos_[i].chunks.empty()) {
        last = i;
        chunked = true;
      }
    }
    if (chunked) {
      for (size_t i = head_; i <= last; ++i) {
        if (pos_[i].state == State::kReady) FoldPosition(pos_[i]);
      }
    }
    closed_ = true;
    if (folded_ > 0) {
      out.data.push_back(acc_.data());
      out.worker.push_back(-1);
    }
    for (size_t i = 0; i < pos_.size(); ++i) {
      if (pos_[i].state != State::kReady) continue;
      out.data.push_back(pos_[i].view);
      out.worker.push_back(static_cast<int64_t>(i));
    }
    if (folded_ > 0 && out.data.size() == 1) out.only_running_sum = acc_.data();
    for (size_t i = 0; i < pos_.size(); ++i) {
      if (pos_[i].squares.has_value()) out.folded_squares.emplace_back(static_cast<uint32_t>(i), *pos_[i].squares);
    }
  }
  RunWakes(std::move(wakes));
  return out;
}

// --- bookkeeping ----------------------------------------------------------

void Accumulator::Count(int64_t staged, int64_t preimage) {
  staged_bytes_ = static_cast<uint64_t>(static_cast<int64_t>(staged_bytes_) + staged);
  preimage_bytes_ = static_cast<uint64_t>(static_cast<int64_t>(preimage_bytes_) + preimage);
  stats_.staged_bytes = staged_bytes_;
  stats_.staged_peak_bytes = std::max(stats_.staged_peak_bytes, staged_bytes_);
  stats_.preimage_peak_bytes = std::max(stats_.preimage_peak_bytes, preimage_bytes_);
}

void Accumulator::CollectParked(Wakes* wakes) {
  for (Position& p : pos_) {
    for (Push* push : p.live) {
      if (push->wake_ != nullptr) {
        wakes->push_back(std::move(push->wake_));
        push->wake_ = nullptr;
      }
    }
  }
}

void Accumulator::RunWakes(Wakes wakes) {
  if (wakes.empty()) return;
  if (schedule_ == nullptr) {
    for (auto& w : wakes) w();
    return;
  }
  schedule_(absl::InfinitePast(), [wakes = std::move(wakes)] {
    for (const auto& w : wakes) w();
  });
}

AccumulatorStats Accumulator::stats() const {
  MutexLock lock(&mu_);
  return stats_;
}

}  // namespace gradacc
