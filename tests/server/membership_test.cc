// Unit tests of Membership: joins with hierarchical covers, leaves (of a
// pusher and the workers it covers; elastic members stop being members),
// when a worker is reported lost, and the job's current size.
#include "server/membership.h"

#include "gtest/gtest.h"

namespace gradacc {
namespace {

const absl::Time kT0 = absl::FromUnixSeconds(1000);

TEST(MembershipTest, JoinsWithCoversLeavesAndLostWorkers) {
  Membership m(4, /*elastic=*/false);
  EXPECT_EQ(m.size(), 4u);
  EXPECT_FALSE(m.AnyJoined());
  EXPECT_EQ(m.ActiveMembers(), 4u) << "a fixed job has every worker as a member from the start";
  // Worker 0 joins for itself and covers 1 and 2; 1 has pushed already.
  m.Join(0, {1, 2}, "host-a", kT0, [](uint32_t w) { return w == 1; });
  EXPECT_TRUE(m.AnyJoined());
  EXPECT_EQ(m.at(0).state, v1::WORKER_STATE_JOINED);
  EXPECT_EQ(m.at(1).state, v1::WORKER_STATE_PUSHED);
  EXPECT_EQ(m.at(2).state, v1::WORKER_STATE_JOINED);
  EXPECT_EQ(m.at(2).covered_by, 0);
  EXPECT_EQ(m.at(0).covered_by, -1);
  EXPECT_EQ(m.at(2).hostname, "host-a");
  EXPECT_EQ(m.at(3).state, v1::WORKER_STATE_NEVER_JOINED);

  // Lost: joined, silent past the timeout, no parked pull; a covered worker
  // is as alive as its pusher; never-joined workers are not lost.
  const absl::Duration timeout = absl::Seconds(5);
  EXPECT_FALSE(m.Lost(0, kT0 + absl::Seconds(4), timeout));
  EXPECT_TRUE(m.Lost(0, kT0 + absl::Seconds(6), timeout));
  m.Seen(0, kT0 + absl::Seconds(5));
  EXPECT_FALSE(m.Lost(2, kT0 + absl::Seconds(6), timeout)) << "covered by 0, seen just now";
  m.at(0).parked_pulls = 1;
  EXPECT_FALSE(m.Lost(0, kT0 + absl::Hours(1), timeout)) << "a parked pull is a live worker";
  EXPECT_FALSE(m.Lost(3, kT0 + absl::Hours(1), timeout));

  // Leaving takes the covered workers with it; a fixed job keeps them as
  // members (the window still expects their ranks).
  m.Leave(0, kT0 + absl::Seconds(7));
  for (uint32_t w : {0u, 1u, 2u}) EXPECT_EQ(m.at(w).state, v1::WORKER_STATE_LEFT) << w;
  EXPECT_TRUE(m.at(0).member);
  EXPECT_EQ(m.ActiveMembers(), 1u);
}

TEST(MembershipTest, ElasticMembersStopBeingMembersWhenTheyLeave) {
  Membership m(3, /*elastic=*/true);
  EXPECT_EQ(m.ActiveMembers(), 0u) << "an elastic job has members only once they are admitted";
  m.at(1).member = true;  // WindowState admits
  m.Join(1, {}, "host-b", kT0, [](uint32_t) { return false; });
  EXPECT_EQ(m.ActiveMembers(), 1u);
  m.Leave(1, kT0 + absl::Seconds(1));
  EXPECT_FALSE(m.at(1).member);
  EXPECT_EQ(m.ActiveMembers(), 0u);
  EXPECT_TRUE(m.AnyJoined()) << "it did join once";
}

}  // namespace
}  // namespace gradacc
