// Unit tests of Failpoints: parsed once, typos refused.
#include "server/failpoints.h"

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "common/errors.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "tests/server/part_test_util.h"

namespace gradacc {
namespace {

using part_test::Event;
using part_test::TempDir;

TEST(FailpointsTest, ParsesOnceAndRefusesTypos) {
  EXPECT_TRUE(Failpoints::Parse({"push:3:2", "mid_broadcast:1", "after_publish:0", "before_checkpoint:4",
                                 "mid_checkpoint:2", "after_checkpoint:5"})
                  .ok());
  EXPECT_FALSE(Failpoints::Parse({"push:3"}).ok());
  EXPECT_FALSE(Failpoints::Parse({"mid_brodcast:1"}).ok());
  EXPECT_FALSE(Failpoints::Parse({"push:x:1"}).ok());
  // A failpoint that does not match does nothing.
  Failpoints::Parse({"push:3:2"})->MaybeKill(Failpoints::Event::kPush, 3, 1);
}

}  // namespace
}  // namespace gradacc
