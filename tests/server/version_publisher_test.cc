// Unit tests of VersionPublisher: pulls park until their version is published, bounded.
#include "server/version_publisher.h"

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "common/errors.h"
#include "common/mutex.h"
#include "gtest/gtest.h"
#include "server/buffer_pool.h"
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

// A model of one tensor and a snapshot pool the size SnapshotBytes says.
struct Chunked {
  Chunked() {
    v1::TensorSpec* t = model.add_tensors();
    t->set_name("w");
    t->add_shape(1000);
    layout = *ModelLayout::FromSpec(model);
    const size_t bytes = SnapshotBytes(layout, range, kChunk);
    pool = std::make_shared<BufferPool>((bytes + sizeof(float) - 1) / sizeof(float), 0, 2);
  }
  std::shared_ptr<const ParamSnapshot> Make(uint64_t version) {
    SnapshotFields fields;
    fields.version = version;
    return MakeSnapshot(layout, range, params, fields, kChunk, true, pool);
  }
  static const void* Base(const ParamSnapshot& s) {
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(s.chunks.at(0).message.Dump(&slices).ok());
    return slices.at(0).begin();
  }
  static constexpr uint64_t kChunk = 256;
  v1::ModelSpec model;
  ModelLayout layout;
  FlatRange range{0, 1000};
  std::vector<float> params = std::vector<float>(1000, 0.5f);
  std::shared_ptr<BufferPool> pool;
};

TEST(VersionPublisherTest, RetireGivesTheChunksBackWhenNoPullHoldsThem) {
  Chunked c;
  DeadlineQueue deadlines;
  auto first = c.Make(1);
  ASSERT_TRUE(first->has_chunks);
  ASSERT_EQ(first->chunks.size(), 4u);
  const void* base = Chunked::Base(*first);
  VersionPublisher p(std::move(first), &deadlines, absl::Seconds(10));
  ASSERT_NE(p.Exact(1), nullptr);

  ASSERT_TRUE(p.Retire());
  std::shared_ptr<const ParamSnapshot> retired = p.Current();
  EXPECT_EQ(retired->version, 1u);
  EXPECT_EQ(retired->header.header().version(), 1u) << "the header stays";
  EXPECT_TRUE(retired->retired);
  EXPECT_FALSE(retired->has_chunks);
  EXPECT_TRUE(retired->chunks.empty());
  EXPECT_EQ(p.Exact(1), nullptr) << "an exact pull no longer gets the retired version";
  EXPECT_FALSE(p.Retire()) << "nothing left to give back";
  // A pull that comes meanwhile is answered with the header alone (a gRPC
  // pull then asks the trainer thread for the next version's chunks).
  std::shared_ptr<const ParamSnapshot> got;
  EXPECT_EQ(p.Wait(1, [&](auto s) { got = *s; }), 0u);
  ASSERT_NE(got, nullptr);
  EXPECT_FALSE(got->has_chunks);

  // The next version is built in the retired one's memory: one snapshot's
  // memory, not two.
  auto second = c.Make(2);
  EXPECT_EQ(Chunked::Base(*second), base);
  uint64_t woke = 0;
  ASSERT_NE(p.Wait(2, [&](auto s) { woke = (*s)->version; }), 0u);
  auto ready = p.Publish(second);
  ASSERT_EQ(ready.size(), 1u);
  ready[0]();
  EXPECT_EQ(woke, 2u);
  EXPECT_EQ(p.Exact(2), second);
}

TEST(VersionPublisherTest, RetireKeepsASnapshotThatAPullHolds) {
  Chunked c;
  DeadlineQueue deadlines;
  auto first = c.Make(1);
  const void* base = Chunked::Base(*first);
  VersionPublisher p(first, &deadlines, absl::Seconds(10));
  // `first` stands for a pull still writing the version's chunks.
  EXPECT_FALSE(p.Retire());
  EXPECT_TRUE(p.Current()->has_chunks);
  EXPECT_FALSE(p.Current()->retired);
  EXPECT_EQ(p.Exact(1), first);
  auto second = c.Make(2);
  EXPECT_NE(Chunked::Base(*second), base) << "the held memory is not reused";
  EXPECT_EQ(Chunked::Base(*first), base);
  // A sharded server keeps the previous version for exact pulls: never retired.
  first.reset();
  VersionPublisher sharded(c.Make(3), &deadlines, absl::Seconds(10), /*keep_previous=*/true);
  EXPECT_FALSE(sharded.Retire());
  EXPECT_NE(sharded.Exact(3), nullptr);
  // A version published without chunks has nothing to give back.
  auto without_chunks = std::make_shared<ParamSnapshot>(*Snap(4));
  without_chunks->has_chunks = false;
  VersionPublisher header_only(std::move(without_chunks), &deadlines, absl::Seconds(10));
  EXPECT_FALSE(header_only.Retire());
}

}  // namespace
}  // namespace gradacc
