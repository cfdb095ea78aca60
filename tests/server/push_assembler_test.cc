// Unit tests of PushAssembler, the push stream's rules between the reactor
// and the Trainer: a stream is one header then chunks; anything else is a
// PROTOCOL refusal, counted once; a complete stream commits; an abandoned
// one counts as refused and changes nothing.
#include "server/push_assembler.h"

#include "common/errors.h"
#include "common/wire.h"
#include "gtest/gtest.h"
#include "tests/server/trainer_fixtures.h"

namespace gradacc::trainer_fixtures {
namespace {

v1::PushRequest HeaderMessage(const Trainer& trainer, const Contribution& c) {
  v1::PushRequest r;
  *r.mutable_header() = testing::HeaderOf(c, trainer.layout().num_elements());
  return r;
}

// The whole contribution as chunk messages of `n` elements.
std::vector<v1::PushRequest> ChunkMessages(const Trainer& trainer, const Contribution& c, uint64_t n) {
  std::vector<v1::PushRequest> out;
  for (size_t i = 0; i < trainer.layout().tensors().size(); ++i) {
    const auto& t = trainer.layout().tensors()[i];
    for (uint64_t off = 0; off < t.size; off += n) {
      v1::PushRequest r;
      r.mutable_chunk()->set_tensor(static_cast<uint32_t>(i));
      r.mutable_chunk()->set_offset(off);
      r.mutable_chunk()->set_data(testing::Bytes(c.grad.data() + t.offset + off, std::min(n, t.size - off)));
      out.push_back(std::move(r));
    }
  }
  return out;
}

TEST(PushAssemblerTest, AStreamIsOneHeaderThenChunks) {
  auto trainer = NewTrainer(SmallJob(1, 2));
  const Contribution c = MakeWindow(0, 1, trainer->layout().num_elements(), 5)[0];
  const std::vector<v1::PushRequest> chunks = ChunkMessages(*trainer, c, 64);
  {
    PushAssembler a(trainer.get());
    EXPECT_EQ(ReasonOf(a.Add(chunks[0])), v1::ERROR_REASON_PROTOCOL) << "a chunk before the header";
  }
  {
    PushAssembler a(trainer.get());
    ASSERT_TRUE(a.Add(HeaderMessage(*trainer, c)).ok());
    EXPECT_EQ(ReasonOf(a.Add(HeaderMessage(*trainer, c))), v1::ERROR_REASON_PROTOCOL) << "a second header";
  }
  {
    PushAssembler a(trainer.get());
    EXPECT_EQ(ReasonOf(a.Add(v1::PushRequest())), v1::ERROR_REASON_PROTOCOL) << "an empty message";
  }
  {
    PushAssembler a(trainer.get());
    EXPECT_EQ(ReasonOf(a.Finish().status()), v1::ERROR_REASON_PROTOCOL) << "no header at all";
  }
  {
    PushAssembler a(trainer.get());
    ASSERT_TRUE(a.Add(HeaderMessage(*trainer, c)).ok());
    const char garbage[] = {'\xff', '\xff', '\xff'};
    grpc::Slice slice(garbage, sizeof(garbage));
    grpc::ByteBuffer not_a_request(&slice, 1);
    EXPECT_EQ(ReasonOf(a.Add(not_a_request)), v1::ERROR_REASON_PROTOCOL);
  }
  {
    // Broken off half-way: refused, nothing accepted.
    PushAssembler a(trainer.get());
    ASSERT_TRUE(a.Add(HeaderMessage(*trainer, c)).ok());
    ASSERT_TRUE(a.Add(chunks[0]).ok());
    a.Abandon(absl::CancelledError("stream broken"));
  }
  EXPECT_EQ(trainer->GetStatus().contributions_accepted(), 0u);
  EXPECT_EQ(trainer->GetStatus().contributions_rejected(), 6u) << "each refusal counted once";

  PushAssembler a(trainer.get());
  ASSERT_TRUE(a.Add(HeaderMessage(*trainer, c)).ok());
  for (const v1::PushRequest& chunk : chunks) ASSERT_TRUE(a.Add(chunk).ok());
  auto result = a.Finish();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->closed_window);
  EXPECT_TRUE(trainer->AwaitVersion(1, absl::Seconds(60)));
  EXPECT_EQ(trainer->GetStatus().contributions_accepted(), 1u);
}

}  // namespace
}  // namespace gradacc::trainer_fixtures
