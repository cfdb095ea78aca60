// Unit tests of ShmTransport: every attach gets a fresh gradient segment; what was accepted never
// changes.
#include "server/shm_transport.h"

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

TEST(ShmTransportTest, EveryAttachGetsAFreshSegment) {
  const std::string dir = TempDir("shm");
  const std::vector<float> params(100, 1.0f);
  ShmTransport shm(dir, false, 100, 2, params, /*fast_path=*/true);
  ASSERT_TRUE(shm.on()) << shm.off_reason();
  EXPECT_EQ(shm.params_data()[99], 1.0f);
  const v1::AttachSharedMemoryResponse first = shm.Attach(0, true);
  ASSERT_TRUE(first.available()) << first.reason();
  auto held = shm.SegmentFor(0, first.generation());
  ASSERT_TRUE(held.ok());
  (*held)->data()[0] = 42;  // an accepted contribution's bytes
  const v1::AttachSharedMemoryResponse second = shm.Attach(0, true);
  ASSERT_TRUE(second.available());
  EXPECT_NE(second.grad_path(), first.grad_path());
  EXPECT_NE(second.generation(), first.generation());
  EXPECT_EQ(ReasonOf(shm.SegmentFor(0, first.generation()).status()), v1::ERROR_REASON_NOT_ATTACHED);
  auto fresh = shm.SegmentFor(0, second.generation());
  ASSERT_TRUE(fresh.ok());
  fresh.value()->data()[0] = 7;  // the restarted worker writes its new segment
  EXPECT_EQ((*held)->data()[0], 42) << "what was accepted does not change";
  EXPECT_EQ(ReasonOf(shm.SegmentFor(1, 0).status()), v1::ERROR_REASON_NOT_ATTACHED);
  // Generations of a server this one replaced are told apart from its own.
  EXPECT_FALSE(shm.FromEarlierServer(first.generation()));
  EXPECT_FALSE(shm.FromEarlierServer(0));
  EXPECT_TRUE(shm.FromEarlierServer(first.generation() - 1));
  shm.BeginParamsWrite(3);
  shm.Publish(4);
  ShmTransport off("", false, 100, 2, params, /*fast_path=*/true);
  EXPECT_FALSE(off.on());
  EXPECT_FALSE(off.Attach(0, true).available());
}

}  // namespace
}  // namespace gradacc
