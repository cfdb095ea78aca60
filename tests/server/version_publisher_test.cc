// Unit tests of VersionPublisher: pulls park until their version is published, bounded.
#include "server/version_publisher.h"

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

std::shared_ptr<const ParamSnapshot> Snap(uint64_t version, bool done = false) {
  auto s = std::make_shared<ParamSnapshot>();
  s->version = version;
  s->header.mutable_header()->set_version(version);
  s->header.mutable_header()->set_job_done(done);
  return s;
}

TEST(VersionPublisherTest, ParksUntilPublishedAndBoundsTheWait) {
  DeadlineQueue deadlines;
  VersionPublisher p(Snap(0), &deadlines, absl::Milliseconds(100));
  uint64_t got = 99;
  EXPECT_EQ(p.Wait(0, [&](auto s) { got = (*s)->version; }), 0u) << "version 0 exists";
  EXPECT_EQ(got, 0u);
  uint64_t woke = 0;
  const uint64_t parked = p.Wait(2, [&](auto s) { woke = (*s)->version; });
  ASSERT_NE(parked, 0u);
  EXPECT_TRUE(p.Publish(Snap(1)).empty()) << "version 1 does not satisfy min_version 2";
  auto ready = p.Publish(Snap(2));
  ASSERT_EQ(ready.size(), 1u);
  EXPECT_EQ(woke, 0u) << "answered by the caller, outside the lock";
  ready[0]();
  EXPECT_EQ(woke, 2u);
  Event expired;
  absl::StatusCode code = absl::StatusCode::kOk;
  p.Wait(9, [&](auto s) {
    code = s.status().code();
    expired.Notify();
  });
  ASSERT_TRUE(expired.WaitFor(absl::Seconds(10)));
  EXPECT_EQ(code, absl::StatusCode::kDeadlineExceeded);
  const uint64_t cancelled = p.Wait(9, [&](auto) { ADD_FAILURE() << "cancelled waiter ran"; });
  EXPECT_TRUE(p.Cancel(cancelled));
  absl::Status stopped;
  p.Wait(9, [&](auto s) { stopped = s.status(); });
  for (auto& r : p.Stop()) r();
  EXPECT_EQ(ReasonOf(stopped), v1::ERROR_REASON_SHUTTING_DOWN);
  EXPECT_EQ(p.Publish(Snap(3, true)).size(), 0u);
}

}  // namespace
}  // namespace gradacc
