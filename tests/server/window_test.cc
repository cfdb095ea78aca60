// Unit tests of Window: when a window is complete under each policy.
#include "server/window.h"

#include <cmath>
#include <limits>
#include <string>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "server/request_validator.h"
#include "server/window_state.h"
#include "tests/server/window_fixtures.h"

namespace gradacc {
namespace window_fixtures {
namespace {

TEST(WindowTest, CompletenessRules) {
  Window w(3);
  w.Open(0, {true, true, false}, absl::Now());
  EXPECT_EQ(w.expected_count(), 2u);
  v1::WindowRule wait;
  EXPECT_FALSE(w.Complete(wait, false, false));
  Slot s;
  s.samples = 3;
  w.Add(1, std::move(s));
  EXPECT_FALSE(w.Complete(wait, false, false));
  v1::WindowRule quorum;
  quorum.set_policy(v1::WindowRule::POLICY_QUORUM);
  quorum.set_quorum(1);
  EXPECT_FALSE(w.Complete(quorum, false, false)) << "quorum only once the deadline passed";
  EXPECT_TRUE(w.Complete(quorum, false, true));
  EXPECT_EQ(w.Missing(), std::vector<uint32_t>{0});
  w.Add(0, Slot());
  EXPECT_TRUE(w.Complete(wait, false, false));
  ClosingWindow c = w.Take();
  EXPECT_EQ(c.workers, (std::vector<uint32_t>{0, 1})) << "slots in worker order";
  EXPECT_EQ(c.slots[1].samples, 3u);
}

}  // namespace
}  // namespace window_fixtures
}  // namespace gradacc
