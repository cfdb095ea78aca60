// common/torch_norm.h against torch itself (tests/golden/norm_golden.txt,
// made by tests/golden/gen_norm_golden.py): every size from 1 to 40 and up
// to a million elements, bit for bit; and any split of a tensor into parts
// (shards) gives the bits of one pass.
#include "common/torch_norm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/job_spec.h"
#include "gtest/gtest.h"

namespace gradacc {
namespace {

std::vector<float> Vector(uint64_t seed, uint64_t size, double scale) {
  std::vector<float> x(size);
  for (uint64_t j = 0; j < size; ++j) x[j] = static_cast<float>((UniformAt(seed, j) - 0.5) * scale);
  return x;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

std::vector<std::string> GoldenLines() {
  std::ifstream in(GRADACC_NORM_GOLDEN);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] != '#') lines.push_back(line);
  }
  return lines;
}

TEST(TorchNormTest, EqualsTorchBitForBit) {
  int checked = 0;
  for (const std::string& line : GoldenLines()) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f[0] == "total") continue;
    ASSERT_EQ(f.size(), 4u) << line;
    uint64_t seed, size;
    double scale;
    uint32_t want;
    ASSERT_TRUE(absl::SimpleAtoi(f[0], &seed) && absl::SimpleAtoi(f[1], &size) && absl::SimpleAtod(f[2], &scale) &&
                absl::SimpleHexAtoi(f[3], &want))
        << line;
    const std::vector<float> x = Vector(seed, size, scale);
    EXPECT_EQ(Bits(std::sqrt(TorchSumOfSquares(x))), want) << "size " << size << " scale " << scale;
    ++checked;
  }
  EXPECT_GT(checked, 150);
}

TEST(TorchNormTest, TotalNormEqualsClipGradNorm) {
  int checked = 0;
  for (const std::string& line : GoldenLines()) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f[0] != "total") continue;
    uint32_t want;
    ASSERT_TRUE(absl::SimpleHexAtoi(f[1], &want));
    std::vector<float> sums;
    for (size_t i = 2; i < f.size(); ++i) {
      std::vector<std::string> t = absl::StrSplit(f[i], ':');
      uint64_t seed, size;
      double scale;
      ASSERT_TRUE(absl::SimpleAtoi(t[0], &seed) && absl::SimpleAtoi(t[1], &size) && absl::SimpleAtod(t[2], &scale));
      sums.push_back(TorchSumOfSquares(Vector(seed, size, scale)));
    }
    EXPECT_EQ(Bits(TorchTotalNorm(sums)), want) << line;
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST(TorchNormTest, AnySplitGivesTheBitsOfOnePass) {
  for (uint64_t size : {1u, 7u, 8u, 13u, 100u, 4099u, 100003u}) {
    const std::vector<float> x = Vector(size, size, 3.0);
    const float whole = TorchSumOfSquares(x);
    for (uint64_t seed = 0; seed < 20; ++seed) {
      // Random cut points, in order.
      std::vector<uint64_t> cuts = {0};
      for (int k = 0; k < 4; ++k) cuts.push_back(static_cast<uint64_t>(UniformAt(seed, k) * size));
      cuts.push_back(size);
      std::sort(cuts.begin(), cuts.end());
      TorchNormState state;
      for (size_t k = 0; k + 1 < cuts.size(); ++k) {
        TorchNormAccumulate(state, absl::MakeConstSpan(x.data() + cuts[k], cuts[k + 1] - cuts[k]), cuts[k], size);
      }
      EXPECT_EQ(Bits(TorchNormFinish(state)), Bits(whole)) << "size " << size << " seed " << seed;
    }
  }
}

}  // namespace
}  // namespace gradacc
