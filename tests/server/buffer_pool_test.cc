// Unit tests of BufferPool: the bound on pushes in flight (OVERLOADED beyond
// it, a place given back when its Admission goes or moves on), and buffers
// reused across pushes up to `keep` (views and other sizes dropped).
#include "server/buffer_pool.h"

#include <utility>
#include <vector>

#include "common/errors.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

TEST(BufferPoolTest, AdmissionsAreBoundedAndGivenBack) {
  BufferPool pool(16, /*max_inflight=*/2, /*keep=*/1);
  auto a = pool.Admit();
  auto b = pool.Admit();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(pool.inflight(), 2);
  const auto refused = pool.Admit();
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(ReasonOf(refused.status()), v1::ERROR_REASON_OVERLOADED) << refused.status();
  a->Release();
  a->Release();  // twice: one place back, not two
  EXPECT_EQ(pool.inflight(), 1);
  {
    BufferPool::Admission moved = *std::move(b);  // the place moves with it
    EXPECT_EQ(pool.inflight(), 1);
    auto c = pool.Admit();
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(pool.inflight(), 2);
    moved = *std::move(c);  // assignment gives the old place back
    EXPECT_EQ(pool.inflight(), 1);
  }
  EXPECT_EQ(pool.inflight(), 0);
}

TEST(BufferPoolTest, BuffersAreReusedUpToKeep) {
  BufferPool pool(16, 4, /*keep=*/1);
  FloatBuffer first = pool.Take();
  ASSERT_EQ(first.size(), 16u);
  const float* memory = first.data();
  FloatBuffer second = pool.Take();
  pool.Return(std::move(first));
  pool.Return(std::move(second));  // over `keep`: freed
  FloatBuffer again = pool.Take();
  EXPECT_EQ(again.data(), memory) << "a returned buffer is handed out again";
  FloatBuffer fresh = pool.Take();
  EXPECT_NE(fresh.data(), memory);
  // Views and buffers of another size never enter the pool.
  std::vector<float> outside(16);
  pool.Return(FloatBuffer::View(outside.data(), outside.size()));
  pool.Return(FloatBuffer(8));
  FloatBuffer next = pool.Take();
  EXPECT_TRUE(next.owned());
  EXPECT_NE(next.data(), outside.data());
  EXPECT_EQ(next.size(), 16u);
}

}  // namespace
}  // namespace gradacc
