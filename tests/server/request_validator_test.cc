// Unit tests of RequestValidator: one validator for every call, and elastic worker ids.
#include "server/request_validator.h"

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

TEST(RequestValidatorTest, OneValidatorForEveryCallAndElasticIds) {
  const v1::JobSpec spec = Job(2, /*max_workers=*/4);
  const ModelLayout layout = *ModelLayout::FromSpec(spec.model());
  const RequestValidator v(&spec, &layout, 4, {0, 10}, 0, 1);
  EXPECT_TRUE(v.CheckCaller("", 3).ok()) << "an elastic job accepts ids up to max_workers";
  EXPECT_TRUE(v.CheckCaller("unit", 0).ok());
  EXPECT_EQ(ReasonOf(v.CheckCaller("", 4)), v1::ERROR_REASON_UNKNOWN_WORKER);
  EXPECT_EQ(ReasonOf(v.CheckCaller("other", 0)), v1::ERROR_REASON_UNKNOWN_JOB);
  EXPECT_EQ(CodeOf(v1::ERROR_REASON_UNKNOWN_JOB), absl::StatusCode::kNotFound);
  v1::PushHeader h = Header(1, 0, 0);
  EXPECT_TRUE(v.CheckPushHeader(h).ok());
  h.set_num_elements(9);
  EXPECT_EQ(ReasonOf(v.CheckPushHeader(h)), v1::ERROR_REASON_SIZE);
  h = Header(1, 0, 0);
  h.set_loss_sum(std::nan(""));
  EXPECT_EQ(ReasonOf(v.CheckPushHeader(h)), v1::ERROR_REASON_NOT_FINITE);
  h = Header(1, 0, 0);
  h.set_samples(uint64_t{1} << 41);
  EXPECT_EQ(ReasonOf(v.CheckPushHeader(h)), v1::ERROR_REASON_SAMPLES);
  h = Header(1, 0, 0);
  h.add_tensors()->set_name("v");
  EXPECT_EQ(ReasonOf(v.CheckPushHeader(h)), v1::ERROR_REASON_MANIFEST);
  h = Header(1, 0, 0);
  h.add_covers(2);
  EXPECT_EQ(ReasonOf(v.CheckPushHeader(h)), v1::ERROR_REASON_UNSUPPORTED) << "covers in an elastic job";
  // untouched_tensors: job tensor indices, increasing.
  h = Header(1, 0, 0);
  h.add_untouched_tensors(0);
  EXPECT_TRUE(v.CheckPushHeader(h).ok());
  h.add_untouched_tensors(0);
  EXPECT_EQ(ReasonOf(v.CheckPushHeader(h)), v1::ERROR_REASON_BAD_VALUE) << "not increasing";
  h = Header(1, 0, 0);
  h.add_untouched_tensors(static_cast<uint32_t>(layout.tensors().size()));
  EXPECT_EQ(ReasonOf(v.CheckPushHeader(h)), v1::ERROR_REASON_BAD_VALUE) << "no such tensor";
}

}  // namespace
}  // namespace window_fixtures
}  // namespace gradacc
