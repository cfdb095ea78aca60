// Unit tests of PushSession (a push's chunks, validated and decoded apart
// from the Trainer) and BufferPool (buffers and pushes in flight).
#include "server/push_session.h"

#include <cstring>
#include <limits>

#include "common/errors.h"
#include "gtest/gtest.h"
#include "common/kernels.h"
#include "server/buffer_pool.h"

namespace gradacc {
namespace {

ModelLayout Layout() {
  v1::ModelSpec model;
  auto* a = model.add_tensors();
  a->set_name("a");
  a->add_shape(6);
  auto* b = model.add_tensors();
  b->set_name("b");
  b->add_shape(4);
  return *ModelLayout::FromSpec(model);
}

std::string F32(std::vector<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

TEST(BufferPoolTest, BoundsPushesInFlightAndReusesBuffers) {
  BufferPool pool(10, /*max_inflight=*/2, /*keep=*/1);
  auto a = pool.Admit();
  auto b = pool.Admit();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(ReasonOf(pool.Admit().status()), v1::ERROR_REASON_OVERLOADED);
  a->Release();
  EXPECT_TRUE(pool.Admit().ok()) << "a released place is free again";
  FloatBuffer x = pool.Take();
  float* data = x.data();
  pool.Return(std::move(x));
  EXPECT_EQ(pool.Take().data(), data) << "a returned buffer is handed out again";
  pool.Return(FloatBuffer(9));  // another size: dropped
}

class PushSessionTest : public ::testing::Test {
 protected:
  PushSession Make(FlatRange range = {0, 10}, v1::WireFormat wire = v1::WIRE_FORMAT_F32) {
    v1::PushHeader h;
    h.set_wire_format(wire);
    return PushSession(&layout_, range, 0, h, pool_.Take(), &pool_, *pool_.Admit());
  }
  ModelLayout layout_ = Layout();
  BufferPool pool_{10, 8, 4};
};

TEST_F(PushSessionTest, EveryMalformedChunkHasItsReason) {
  PushSession s = Make();
  EXPECT_EQ(ReasonOf(s.AddChunk(2, 0, F32({1}))), v1::ERROR_REASON_TENSOR_INDEX);
  EXPECT_EQ(ReasonOf(s.AddChunk(0, 0, F32({1}), "b")), v1::ERROR_REASON_TENSOR_NAME);
  EXPECT_EQ(ReasonOf(s.AddChunk(0, 0, "abc")), v1::ERROR_REASON_CHUNK_SIZE);
  EXPECT_EQ(ReasonOf(s.AddChunk(0, 0, "")), v1::ERROR_REASON_CHUNK_SIZE);
  EXPECT_EQ(ReasonOf(s.AddChunk(0, 5, F32({1, 2}))), v1::ERROR_REASON_CHUNK_RANGE);
  EXPECT_EQ(ReasonOf(s.AddChunk(0, 0, F32({1, std::numeric_limits<float>::infinity()}))),
            v1::ERROR_REASON_NOT_FINITE);
  ASSERT_TRUE(s.AddChunk(0, 2, F32({1, 2})).ok());
  const absl::Status overlap = s.AddChunk(0, 3, F32({1}));
  EXPECT_EQ(ReasonOf(overlap), v1::ERROR_REASON_OVERLAP);
  EXPECT_NE(overlap.message().find("tensor 'a'"), std::string::npos) << overlap;
  EXPECT_EQ(ErrorMetadataOf(overlap, "tensor"), "a");
  {
    // A loss-scaling job: an overflow is accepted (the step skips the window).
    PushSession scaled = Make();
    scaled.AcceptNonFinite();
    EXPECT_TRUE(scaled.AddChunk(0, 0, F32({1, std::numeric_limits<float>::infinity()})).ok());
  }
  const absl::Status missing = s.CheckComplete();
  EXPECT_EQ(ReasonOf(missing), v1::ERROR_REASON_MISSING_CHUNKS);
  EXPECT_NE(missing.message().find("tensor 'a' from element 0"), std::string::npos) << missing;
  ASSERT_TRUE(s.AddChunk(0, 0, F32({1, 2})).ok());
  ASSERT_TRUE(s.AddChunk(0, 4, F32({5, 6})).ok());
  ASSERT_TRUE(s.AddChunk(1, 0, F32({7, 8, 9, 10}), "b").ok());
  EXPECT_TRUE(s.CheckComplete().ok());
  FloatBuffer g = s.TakeGradient();
  EXPECT_EQ(g[0], 1);
  EXPECT_EQ(g[2], 1);
  EXPECT_EQ(g[9], 10);
}

TEST_F(PushSessionTest, ShardsTakeOnlyTheirElements) {
  PushSession s = Make({4, 8});
  EXPECT_EQ(ReasonOf(s.AddChunk(0, 0, F32({1}))), v1::ERROR_REASON_OUTSIDE_SHARD);
  ASSERT_TRUE(s.AddChunk(0, 4, F32({1, 2})).ok());
  ASSERT_TRUE(s.AddChunk(1, 0, F32({3, 4})).ok());
  EXPECT_TRUE(s.CheckComplete().ok());
}

TEST_F(PushSessionTest, CompressedChunksWidenExactly) {
  PushSession s = Make({0, 10}, v1::WIRE_FORMAT_BF16);
  std::string bytes(12, '\0');
  EncodeBf16(std::vector<float>{1, -2, 0.5f, 3, 4, 5}, bytes.data());
  ASSERT_TRUE(s.AddChunk(0, 0, bytes).ok());
  EXPECT_EQ(ReasonOf(s.AddChunk(1, 0, "abc")), v1::ERROR_REASON_CHUNK_SIZE);
}

TEST_F(PushSessionTest, AnAbandonedSessionReturnsItsBuffer) {
  FloatBuffer known(10);
  float* const data = known.data();
  pool_.Return(std::move(known));
  {
    PushSession s = Make();  // takes `known` from the pool
    ASSERT_TRUE(s.AddChunk(0, 0, F32({1})).ok());
  }
  EXPECT_EQ(pool_.Take().data(), data) << "the session's buffer went back to the pool";
}

}  // namespace
}  // namespace gradacc
