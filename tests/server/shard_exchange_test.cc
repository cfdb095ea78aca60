// ShardExchange: two shards of a job exchanging their parts of a window's
// norm over real gRPC (both served by one in-process server), the carry of
// a split tensor, the bound on a peer that never publishes, Stop, and the
// published parts kept for peers.
#include "server/shard_exchange.h"

#include <atomic>
#include <cstring>
#include <thread>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "tests/server/exchange_fixture.h"

namespace gradacc {
namespace {

using exchange_fixture::Part;
using exchange_fixture::TwoShards;

NormPart LocalPart(std::vector<float> finished, bool found_inf = false) {
  NormPart p;
  p.finished = std::move(finished);
  p.found_inf = found_inf;
  return p;
}

TEST(ShardExchangeTest, EveryShardGetsTheSameTotalsAddedInShardOrder) {
  TwoShards shards;
  absl::StatusOr<NormTotals> t0;
  std::thread other([&] { t0 = shards.exchange(0).Exchange(3, LocalPart({1.5f, 0.0f, 0.25f})); });
  const absl::StatusOr<NormTotals> t1 = shards.exchange(1).Exchange(3, LocalPart({0.0f, 2.0f, 1e-8f}, true));
  other.join();
  ASSERT_TRUE(t0.ok()) << t0.status();
  ASSERT_TRUE(t1.ok()) << t1.status();
  const std::vector<float> expected = {1.5f + 0.0f, 0.0f + 2.0f, 0.25f + 1e-8f};
  EXPECT_EQ(t0->sums, expected);
  EXPECT_EQ(std::memcmp(t0->sums.data(), t1->sums.data(), expected.size() * sizeof(float)), 0);
  EXPECT_TRUE(t0->found_inf);  // one shard's part is enough
  EXPECT_TRUE(t1->found_inf);
  // Each keeps its own part for peers that ask later.
  ASSERT_TRUE(shards.exchange(1).Published(3).has_value());
  EXPECT_EQ(shards.exchange(1).Published(3)->shard(), 1u);
  EXPECT_FALSE(shards.exchange(1).Published(4).has_value());
}

TEST(ShardExchangeTest, CarryInIsThePreviousShardsStateOfTheSplitTensor) {
  TwoShards shards;
  v1::GetNormPartialResponse part = Part(0, {0.0f});
  v1::NormCarry* carry = part.mutable_carry();
  carry->set_present(true);
  carry->set_tensor(0);
  for (int i = 0; i < 8; ++i) carry->add_lanes(0.5f * i);
  for (float t : {1.0f, 2.0f, 3.0f}) carry->add_tail(t);
  shards.exchange(0).Restore(5, part);
  const absl::StatusOr<TorchNormState> state = shards.exchange(1).CarryIn(5);
  ASSERT_TRUE(state.ok()) << state.status();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(state->lanes[i], 0.5f * i);
  EXPECT_EQ(state->tail_count, 3u);
  EXPECT_EQ(state->tail[2], 3.0f);
  // Shard 0 has no shard before it.
  EXPECT_FALSE(shards.exchange(0).CarryIn(5).ok());
  // A part without a carry is refused, not taken as zeros.
  shards.exchange(0).Restore(6, Part(0, {0.0f}));
  EXPECT_EQ(shards.exchange(1).CarryIn(6).status().code(), absl::StatusCode::kInternal);
}

TEST(ShardExchangeTest, PeerThatNeverPublishesIsAwayAfterTheTimeout) {
  TwoShards shards(/*timeout=*/absl::Milliseconds(300));
  const absl::Time start = absl::Now();
  const absl::StatusOr<NormTotals> totals = shards.exchange(0).Exchange(7, LocalPart({1.0f}));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  ASSERT_FALSE(totals.ok());
  EXPECT_EQ(ReasonOf(totals.status()), v1::ERROR_REASON_PEER_SHARD_AWAY) << totals.status();
  EXPECT_EQ(ErrorMetadataOf(totals.status(), "shard"), "1");
}

TEST(ShardExchangeTest, StopGivesUpAWaitForAPeer) {
  TwoShards shards(/*timeout=*/absl::Seconds(60));
  std::atomic<bool> returned{false};
  absl::StatusOr<NormTotals> totals;
  std::thread waiter([&] {
    totals = shards.exchange(0).Exchange(8, LocalPart({1.0f}));
    returned = true;
  });
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(returned.load());
  const absl::Time stop = absl::Now();
  shards.exchange(0).Stop();
  waiter.join();
  EXPECT_LT(absl::Now() - stop, absl::Seconds(10));
  EXPECT_EQ(totals.status().code(), absl::StatusCode::kCancelled) << totals.status();
  // Stopped for good: a later exchange fails at once.
  EXPECT_EQ(shards.exchange(0).Exchange(9, LocalPart({1.0f})).status().code(), absl::StatusCode::kCancelled);
}

TEST(ShardExchangeTest, WhenPublishedRunsOnceAtPublicationUnlessCancelled) {
  TwoShards shards;
  ShardExchange& e = shards.exchange(1);
  int calls = 0, cancelled_calls = 0;
  float seen = 0;
  const uint64_t id = e.WhenPublished(10, [&](const v1::GetNormPartialResponse& p) {
    ++calls;
    seen = p.finished(0);
  });
  const uint64_t dropped = e.WhenPublished(10, [&](const v1::GetNormPartialResponse&) { ++cancelled_calls; });
  EXPECT_NE(id, 0u);
  EXPECT_NE(dropped, 0u);
  EXPECT_EQ(calls, 0);
  e.Cancel(dropped);
  e.Restore(10, Part(1, {4.0f}));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, 4.0f);
  EXPECT_EQ(cancelled_calls, 0);
  // Already published: called before it returns, with id 0.
  EXPECT_EQ(e.WhenPublished(10, [&](const v1::GetNormPartialResponse&) { ++calls; }), 0u);
  EXPECT_EQ(calls, 2);
}

TEST(ShardExchangeTest, KeepsOnlyTheLastWindowsParts) {
  TwoShards shards;
  for (uint64_t w = 0; w < 70; ++w) shards.exchange(0).Restore(w, Part(0, {static_cast<float>(w)}));
  EXPECT_FALSE(shards.exchange(0).Published(0).has_value());
  ASSERT_TRUE(shards.exchange(0).Published(69).has_value());
  EXPECT_EQ(shards.exchange(0).Published(69)->finished(0), 69.0f);
}

TEST(ShardExchangeTest, ShardsOfOneProcessMustListTheSamePeers) {
  TwoShards shards;
  auto other = ShardExchange::Create(1, {"127.0.0.1:1", "127.0.0.1:2"}, "job", ConnectionOptions(), absl::Seconds(1),
                                     &shards.exchange(0));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gradacc
