// Unit tests of ContributionLedger: duplicates, reused keys, and its bound.
#include "server/contribution_ledger.h"

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

TEST(ContributionLedgerTest, DuplicateReusedAndBounded) {
  ContributionLedger ledger(2, /*keep=*/3);
  EXPECT_EQ(ledger.Find(0, 5, 5).seen, ContributionLedger::Seen::kNew);
  ledger.Record(0, 5, 5);
  EXPECT_EQ(ledger.Find(0, 5, 5).seen, ContributionLedger::Seen::kDuplicate);
  EXPECT_EQ(ledger.Find(0, 5, 6).seen, ContributionLedger::Seen::kReused);
  EXPECT_EQ(ledger.Find(1, 5, 5).seen, ContributionLedger::Seen::kNew) << "keys are per worker";
  for (uint64_t k = 6; k < 9; ++k) ledger.Record(0, k, k);
  EXPECT_FALSE(ledger.Holds(0, 5)) << "only the newest 3 keys are kept";
  EXPECT_TRUE(ledger.Holds(0, 8));
  google::protobuf::Map<uint64_t, uint64_t> exported;
  ledger.Export(0, /*version=*/8, &exported);
  EXPECT_EQ(exported.size(), 2u) << "window 8 is open at version 8: not durable";
  ContributionLedger restored(2);
  restored.Import(0, exported);
  EXPECT_TRUE(restored.Holds(0, 7));
  EXPECT_FALSE(restored.Holds(0, 8));
}

}  // namespace
}  // namespace window_fixtures
}  // namespace gradacc
