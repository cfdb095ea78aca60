// libFuzzer target over the push path a client controls: protobuf parsing
// of PushRequest messages, header validation, chunk assembly (ranges,
// overlaps, NaN/Inf, names), commit, duplicate and stale handling, and
// window closing, against one long-lived Trainer.
//
// Input: a sequence of records [op: 1 byte][len: 2 bytes LE][len bytes].
//   op % 4 == 0: join worker (first byte % 3; the id may be out of range)
//   op % 4 == 1: a PushRequest message (serialised protobuf) of the open stream
//   op % 4 == 2: half-close the open stream (commit)
//   op % 4 == 3: abandon the open stream
#include <cstddef>
#include <cstdint>
#include <memory>

#include "gradacc/v1/data.pb.h"
#include "server/push_assembler.h"
#include "server/trainer.h"

namespace {

gradacc::Trainer* MakeTrainer() {
  gradacc::v1::JobSpec spec;
  spec.set_job_id("fuzz");
  auto* w = spec.mutable_model()->add_tensors();
  w->set_name("w");
  w->add_shape(7);
  w->add_shape(5);
  auto* b = spec.mutable_model()->add_tensors();
  b->set_name("b");
  b->add_shape(5);
  spec.mutable_optimizer()->set_kind(gradacc::v1::OptimizerSpec::KIND_ADAM);
  spec.mutable_optimizer()->set_lr(0.01);
  spec.mutable_window()->set_num_workers(2);
  spec.mutable_clipping()->set_max_norm(1.0);
  spec.set_total_steps(uint64_t{1} << 40);
  gradacc::TrainerOptions options;
  options.pull_chunk_elements = 16;
  auto trainer = gradacc::Trainer::Create(spec, options);
  if (!trainer.ok()) __builtin_trap();
  return trainer->release();  // lives for the whole fuzzing session
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static gradacc::Trainer* trainer = MakeTrainer();
  auto assembler = std::make_unique<gradacc::PushAssembler>(trainer);
  bool open = true;
  size_t i = 0;
  while (i + 3 <= size) {
    const uint8_t op = data[i];
    const size_t len = std::min<size_t>(data[i + 1] | (size_t{data[i + 2]} << 8), size - i - 3);
    const uint8_t* body = data + i + 3;
    i += 3 + len;
    switch (op % 4) {
      case 0: {
        gradacc::v1::JoinRequest join;
        join.set_worker(len > 0 ? body[0] % 3 : 0);
        (void)trainer->Join(join);
        break;
      }
      case 1: {
        gradacc::v1::PushRequest request;
        if (!request.ParseFromArray(body, static_cast<int>(len))) break;
        if (!open) assembler = std::make_unique<gradacc::PushAssembler>(trainer);
        open = true;
        if (!assembler->Add(request).ok()) open = false;
        break;
      }
      case 2:
        if (open) (void)assembler->Finish();
        open = false;
        break;
      default:
        assembler->Abandon(absl::CancelledError("stream broken"));
        open = false;
        break;
    }
  }
  (void)trainer->GetStatus();
  (void)trainer->Parameters();
  return 0;
}
