// Unit tests of the Accumulator (server/accumulator.h): the running sum in
// worker order, as chunks arrive in any order, with a staging pool that may
// be tiny — bit-identical to summing whole contributions in worker order;
// pushes taken back out at every chunk boundary; stalls that spill; absent
// workers and pushes still in flight at close.
#include "server/accumulator.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "common/kernels.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace gradacc {
namespace {

constexpr size_t kElements = 1000;
constexpr size_t kChunk = 128;  // 8 chunks a push, the last one short

std::vector<std::vector<float>> Contributions(uint32_t m, uint32_t seed) {
  std::mt19937 rng(seed);
  // Magnitudes that differ by orders so that any other order of the adds
  // changes bits.
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<std::vector<float>> c(m, std::vector<float>(kElements));
  for (uint32_t k = 0; k < m; ++k) {
    for (float& x : c[k]) x = u(rng) * static_cast<float>(1 << (3 * k % 17));
  }
  return c;
}

// SumInOrder over `sources` (the reference: today's close).
std::vector<float> Sum(const std::vector<const float*>& sources) {
  std::vector<float> out(kElements);
  SumInOrder(absl::MakeSpan(out), absl::MakeConstSpan(sources), /*divisor=*/0, ~size_t{0});
  return out;
}

std::vector<float> Reference(const std::vector<std::vector<float>>& c, const std::vector<uint32_t>& in) {
  std::vector<const float*> s;
  for (uint32_t k : in) s.push_back(c[k].data());
  return Sum(s);
}

// Drives pushes the way the gRPC reactor does, on one thread: a parked push
// is offered again only once its wake ran; wakes and timers run when the
// test says.
class Driver {
 public:
  explicit Driver(AccumulatorOptions options, uint32_t workers = 4)
      : pool_(kElements, 64, 4),
        acc_(kElements, workers, options, &pool_, [this](absl::Time when, std::function<void()> fn) {
          (when == absl::InfinitePast() ? due_ : timers_).push_back(std::move(fn));
        }) {
    acc_.Open(0);
  }

  struct Stream {
    uint32_t worker;
    std::unique_ptr<Accumulator::Push> push;
    std::vector<uint32_t> order;  // chunk indices, in sending order
    size_t sent = 0;
    bool parked = false;
    bool closed = false;
  };

  Stream* Start(uint32_t worker, std::vector<uint32_t> order = {}) {
    if (order.empty()) {
      for (uint32_t i = 0; i * kChunk < kElements; ++i) order.push_back(i);
    }
    streams_.push_back(std::make_unique<Stream>(Stream{worker, acc_.Begin(worker, window_), std::move(order)}));
    return streams_.back().get();
  }

  // Offers the stream's next chunk; false when it parked (or is parked).
  bool Step(Stream* s, const std::vector<float>& data) {
    if (s->parked || s->closed || s->sent == s->order.size()) return false;
    const uint64_t offset = s->order[s->sent] * kChunk;
    const size_t n = std::min(kChunk, kElements - offset);
    absl::Span<float> dst;
    auto outcome = s->push->Reserve(
        offset, n, [s] { s->parked = false; }, &dst);
    if (outcome == Accumulator::Push::Outcome::kParked) {
      s->parked = true;
      return false;
    }
    if (outcome == Accumulator::Push::Outcome::kClosed) {
      s->closed = true;
      return false;
    }
    std::copy(data.begin() + offset, data.begin() + offset + n, dst.begin());
    if (!s->push->Place()) {
      s->closed = true;
      return false;
    }
    ++s->sent;
    return true;
  }
  bool Done(const Stream* s) const { return s->sent == s->order.size(); }

  void Accept(Stream* s, std::vector<uint32_t> covers = {}) {
    acc_.Accepted(s->push.get(), covers);
    acc_.Advance();
  }
  void RunWakes() {
    while (!due_.empty()) {
      auto fns = std::move(due_);
      due_.clear();
      for (auto& f : fns) f();
    }
  }
  void RunTimers() {
    auto fns = std::move(timers_);
    timers_.clear();
    for (auto& f : fns) f();
    RunWakes();
  }
  // The window's reduction, from what Finish hands over.
  std::vector<float> Finish() {
    WindowSources s = acc_.Finish(window_);
    RunWakes();
    return Sum(s.data);
  }
  WindowSources FinishSources() {
    WindowSources s = acc_.Finish(window_);
    RunWakes();
    return s;
  }
  void Next() { acc_.Open(++window_); }

  Accumulator& acc() { return acc_; }
  BufferPool& pool() { return pool_; }

 private:
  BufferPool pool_;
  std::vector<std::function<void()>> due_, timers_;
  Accumulator acc_;
  uint64_t window_ = 0;
  std::vector<std::unique_ptr<Stream>> streams_;
};

AccumulatorOptions Options(size_t staging_bytes, absl::Duration stall = absl::InfiniteDuration()) {
  AccumulatorOptions o;
  o.staging_bytes = staging_bytes;
  o.stall_limit = stall;
  o.parallel_min_elements = 64;  // both threads even at this size
  return o;
}

// Every stream sends its chunks in its own shuffled order; at each step one
// random stream that is not parked sends one; a complete stream is accepted
// at once. Whatever the interleaving and the pool's size, the running sum
// is the sum in worker order, bit for bit, and staging never passes its
// bound.
TEST(AccumulatorTest, AnyArrivalOrderAndAnyStagingGiveTheSumInWorkerOrder) {
  constexpr uint32_t kWorkers = 4;
  const auto c = Contributions(kWorkers, 7);
  const std::vector<float> want = Reference(c, {0, 1, 2, 3});
  for (size_t staging : {size_t{0}, kChunk * 4 - 1, kChunk * 4 * 3, size_t{1} << 20}) {
    for (uint32_t seed = 0; seed < 40; ++seed) {
      Driver d(Options(staging), kWorkers);
      std::mt19937 rng(seed);
      std::vector<Driver::Stream*> s;
      std::vector<uint32_t> workers = {0, 1, 2, 3};
      std::shuffle(workers.begin(), workers.end(), rng);
      for (uint32_t w : workers) {
        std::vector<uint32_t> order(8);
        for (uint32_t i = 0; i < 8; ++i) order[i] = i;
        std::shuffle(order.begin(), order.end(), rng);
        s.push_back(d.Start(w, order));
      }
      size_t accepted = 0;
      for (int guard = 0; accepted < kWorkers && guard < 10000; ++guard) {
        d.RunWakes();
        std::vector<Driver::Stream*> ready;
        for (auto* x : s) {
          if (!x->parked && !d.Done(x)) ready.push_back(x);
        }
        ASSERT_FALSE(ready.empty()) << "every stream parked: the head must always progress (staging " << staging
                                    << ", seed " << seed << ")";
        Driver::Stream* x = ready[rng() % ready.size()];
        d.Step(x, c[x->worker]);
        if (d.Done(x)) {
          d.Accept(x);
          ++accepted;
        }
      }
      ASSERT_EQ(accepted, kWorkers);
      EXPECT_TRUE(testing::BitIdentical(d.Finish(), want)) << "staging " << staging << ", seed " << seed;
      const AccumulatorStats st = d.acc().stats();
      EXPECT_LE(st.staged_peak_bytes, staging);
      EXPECT_LE(st.preimage_peak_bytes, kElements * sizeof(float)) << "one head's pre-images at most";
      EXPECT_EQ(st.spilled, 0u);
      EXPECT_EQ(st.staged_bytes, 0u);
    }
  }
}

// A push broken off after any number of chunks — as the head (its chunks in
// the sum), as a staged push, or while others are staged behind it — is
// taken back out exactly: after its retry, the sum is bit-identical.
TEST(AccumulatorTest, APushAbortedAtEveryChunkBoundaryChangesNothing) {
  constexpr uint32_t kWorkers = 3;
  const auto c = Contributions(kWorkers, 11);
  const std::vector<float> want = Reference(c, {0, 1, 2});
  for (uint32_t victim = 0; victim < kWorkers; ++victim) {
    for (size_t boundary = 0; boundary <= 8; ++boundary) {
      // `others_first`: the other workers' pushes are complete (folded or
      // staged) before the victim starts; else they come after the abort.
      for (bool others_first : {false, true}) {
        Driver d(Options(size_t{1} << 20), kWorkers);
        std::vector<Driver::Stream*> s(kWorkers, nullptr);
        if (others_first) {
          for (uint32_t w = 0; w < kWorkers; ++w) {
            if (w == victim) continue;
            s[w] = d.Start(w);
            while (d.Step(s[w], c[w])) {
            }
          }
        }
        Driver::Stream* broken = d.Start(victim);
        for (size_t i = 0; i < boundary; ++i) ASSERT_TRUE(d.Step(broken, c[victim]));
        broken->push.reset();  // the stream breaks: its session ends
        for (uint32_t w = 0; w < kWorkers; ++w) {
          if (s[w] == nullptr) s[w] = d.Start(w);  // the victim's retry, and the others
          while (d.Step(s[w], c[w])) {
          }
          ASSERT_TRUE(d.Done(s[w]));
        }
        for (uint32_t w = 0; w < kWorkers; ++w) d.Accept(s[w]);
        EXPECT_TRUE(testing::BitIdentical(d.Finish(), want)) << "victim " << victim << " broken after " << boundary
                                                             << " chunks" << (others_first ? ", others first" : "");
        EXPECT_EQ(d.acc().stats().staged_bytes, 0u);
      }
    }
  }
}

// The head's own sum's values come back exactly: an abort after the first
// contribution was folded restores the pre-images (not a subtraction).
TEST(AccumulatorTest, AnAbortedHeadRestoresThePreImagesAfterFolds) {
  const auto c = Contributions(3, 5);
  for (size_t boundary = 1; boundary <= 8; ++boundary) {
    Driver d(Options(size_t{1} << 20), 3);
    auto* a = d.Start(0);
    while (d.Step(a, c[0])) {
    }
    d.Accept(a);
    auto* b = d.Start(1);
    for (size_t i = 0; i < boundary; ++i) ASSERT_TRUE(d.Step(b, c[1]));
    b->push.reset();
    auto* e = d.Start(2);
    while (d.Step(e, c[2])) {
    }
    d.Accept(e);
    // Worker 1 never comes back: the window closes without it (QUORUM).
    EXPECT_TRUE(testing::BitIdentical(d.Finish(), Reference(c, {0, 2}))) << "after " << boundary << " chunks";
  }
}

// A staging pool full and a head that does not move: the parked push waits
// the stall limit, then takes a buffer of its own and is added at its turn.
TEST(AccumulatorTest, AStalledPushSpillsAndStillAddsAtItsTurn) {
  const auto c = Contributions(3, 3);
  Driver d(Options(kChunk * sizeof(float) * 2, absl::ZeroDuration()), 3);
  auto* late = d.Start(2);
  EXPECT_TRUE(d.Step(late, c[2]));
  EXPECT_TRUE(d.Step(late, c[2]));
  EXPECT_FALSE(d.Step(late, c[2])) << "the pool holds two chunks";
  EXPECT_TRUE(late->parked);
  d.RunTimers();  // the stall limit (zero here) passed with no progress
  EXPECT_FALSE(late->parked);
  while (d.Step(late, c[2])) {
  }
  ASSERT_TRUE(d.Done(late));
  EXPECT_EQ(d.acc().stats().spilled, 1u);
  EXPECT_EQ(d.acc().stats().staged_bytes, 0u) << "its staged chunks moved into its own buffer";
  d.Accept(late);
  auto* first = d.Start(0);
  auto* second = d.Start(1);
  while (d.Step(second, c[1])) {
  }
  EXPECT_TRUE(second->parked) << "worker 1 waits for worker 0";
  while (d.Step(first, c[0])) {
  }
  d.Accept(first);
  d.RunWakes();
  EXPECT_FALSE(second->parked) << "worker 1 is the head now";
  while (d.Step(second, c[1])) {
  }
  ASSERT_TRUE(d.Done(second));
  d.Accept(second);
  EXPECT_TRUE(testing::BitIdentical(d.Finish(), Reference(c, {0, 1, 2})));
}

// A second push of a worker whose contribution is already in the running sum
// (a retry whose original got through) is read and dropped, never added; a
// push still in flight when the window closes is taken out; the next window
// starts from nothing.
TEST(AccumulatorTest, DuplicatesAndLatePushesNeverEnterTheSum) {
  const auto c = Contributions(2, 9);
  Driver d(Options(size_t{1} << 20), 2);
  auto* a = d.Start(0);
  auto* retry = d.Start(0);
  while (d.Step(a, c[0])) {
  }
  d.Accept(a);
  std::vector<float> other(kElements, 1e6f);
  while (d.Step(retry, other)) {
  }
  EXPECT_TRUE(d.Done(retry)) << "a duplicate is read to its end (the window refuses it then)";
  auto* b = d.Start(1);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(d.Step(b, c[1]));
  EXPECT_TRUE(testing::BitIdentical(d.Finish(), Reference(c, {0}))) << "worker 1 is still in flight: out";
  EXPECT_FALSE(d.Step(b, c[1]));
  EXPECT_TRUE(b->closed);
  d.Next();
  auto* n0 = d.Start(1);
  while (d.Step(n0, c[1])) {
  }
  d.Accept(n0);
  EXPECT_TRUE(testing::BitIdentical(d.Finish(), Reference(c, {1})));
}

// Whole buffers (shared-memory segments, spilled pushes) stay whole for the
// fused close unless a chunked contribution comes after them; covered
// workers add nothing.
TEST(AccumulatorTest, WholeBuffersAreFoldedOnlyWhenAChunkedOneFollows) {
  const auto c = Contributions(4, 13);
  {
    Driver d(Options(size_t{1} << 20), 4);
    d.acc().AcceptedView(0, c[0].data(), nullptr, {});
    d.acc().AcceptedView(2, c[2].data(), nullptr, {1});
    d.acc().AcceptedView(3, c[3].data(), nullptr, {});
    d.acc().Advance();
    WindowSources s = d.FinishSources();
    ASSERT_EQ(s.data.size(), 3u) << "no chunked push: the segments go to the step as they are";
    EXPECT_EQ(s.worker, (std::vector<int64_t>{0, 2, 3}));
    EXPECT_TRUE(testing::BitIdentical(Sum(s.data), Reference(c, {0, 2, 3})));
  }
  {
    Driver d(Options(size_t{1} << 20), 4);
    d.acc().AcceptedView(0, c[0].data(), nullptr, {});
    d.acc().AcceptedView(3, c[3].data(), nullptr, {});
    auto* g = d.Start(2);
    while (d.Step(g, c[2])) {
    }
    d.Accept(g, {1});
    WindowSources s = d.FinishSources();
    ASSERT_EQ(s.data.size(), 2u);
    EXPECT_EQ(s.worker, (std::vector<int64_t>{-1, 3})) << "0 and 2 folded; 3 stays whole";
    EXPECT_TRUE(testing::BitIdentical(Sum(s.data), Reference(c, {0, 2, 3})));
    // Worker 0's segment was folded: its norm for the ledger is measured
    // there (worker 2's chunks were measured as they arrived, by its session).
    ASSERT_EQ(s.folded_squares.size(), 1u);
    EXPECT_EQ(s.folded_squares[0].first, 0u);
    EXPECT_EQ(s.folded_squares[0].second, SumOfSquaresParallel(absl::MakeConstSpan(c[0])));
  }
}

}  // namespace
}  // namespace gradacc
