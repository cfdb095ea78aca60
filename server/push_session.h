// PushSession: one push in flight, from its accepted header to its commit.
// It validates and decodes each chunk where the window's Accumulator places
// it (the running sum, the staging pool, or a buffer of the push's own),
// measures it (the ledger's per-contribution norm), and knows what is still
// missing; a shared-memory push's segment is checked once. Nothing counts
// for any window until the Trainer commits it; destroying the session takes
// it back out of the running sum and frees its place.
//
// Knows nothing of the Trainer: it is given the model layout, the flat range
// this server owns, where chunks go and the push's admission. Not
// thread-safe (one gRPC stream feeds it, one thread at a time); the layout
// must outlive it.
#ifndef GRADACC_SERVER_PUSH_SESSION_H_
#define GRADACC_SERVER_PUSH_SESSION_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/buffer.h"
#include "common/job_spec.h"
#include "common/shm.h"
#include "gradacc/v1/data.pb.h"
#include "server/accumulator.h"
#include "server/buffer_pool.h"

namespace gradacc {

// AddChunk's answer when the chunk must wait for its turn (the staging pool
// is full): nothing was read or counted; offer the same chunk again once the
// session's wake function runs.
absl::Status Parked();
bool IsParked(const absl::Status& status);

class PushSession {
 public:
  // A gRPC push whose chunks go where `push` places them.
  PushSession(const ModelLayout* layout, FlatRange range, uint32_t shard, v1::PushHeader header,
              std::unique_ptr<Accumulator::Push> push, BufferPool::Admission admission);
  // `buffer` holds the elements [range.begin, range.end) of the model;
  // `segment`, when set, is the worker's shared-memory gradient segment that
  // `buffer` views (a header-only push).
  // A buffer still held when the session ends goes back to `pool`.
  PushSession(const ModelLayout* layout, FlatRange range, uint32_t shard, v1::PushHeader header,
              FloatBuffer buffer, BufferPool* pool, BufferPool::Admission admission,
              std::shared_ptr<ShmSegment> segment = nullptr);
  ~PushSession();
  PushSession(const PushSession&) = delete;
  PushSession& operator=(const PushSession&) = delete;

  // Validates and copies one chunk: tensor index and name, range, overlap
  // with earlier chunks, byte length, NaN/Inf. Every refusal carries its
  // reason (common/errors.h) and names the tensor and the range; Parked()
  // when it must wait (only with a wake function); STALE_WINDOW when the
  // window closed without this push.
  absl::Status AddChunk(uint32_t tensor, uint64_t offset, absl::string_view bytes, absl::string_view name = "");
  // The same for a payload of `bytes` bytes that lies elsewhere (gRPC's
  // receive slices): once the chunk is validated, `read(dst)` must copy
  // exactly `bytes` bytes to `dst` (false: the payload is shorter). An f32
  // payload is copied straight to its place in the push's buffer.
  absl::Status AddChunkFrom(uint32_t tensor, uint64_t offset, size_t bytes, absl::string_view name,
                            absl::FunctionRef<bool(char*)> read);
  // OK when every element arrived (a shared-memory push: when the segment
  // holds only finite values); else MISSING_CHUNKS naming the first gap, or
  // NOT_FINITE.
  absl::Status CheckComplete() const;

  const v1::PushHeader& header() const { return header_; }
  bool shared_memory() const { return segment_ != nullptr; }
  // A loss-scaling job (JobSpec.loss_scaling): NaN and Inf elements are
  // accepted (the step skips the window), not refused.
  void AcceptNonFinite() { accept_non_finite_ = true; }
  absl::Time arrival() const { return arrival_; }
  // Called (on another thread) when a parked chunk may be offered again.
  void set_wake(std::function<void()> wake) { wake_ = std::move(wake); }
  // The gradient, once complete (a session given a buffer); the session no
  // longer holds it.
  FloatBuffer TakeGradient() { return std::move(buffer_); }
  // A gRPC push's place in the window's accumulator (null otherwise).
  Accumulator::Push* accumulated() const { return push_.get(); }
  // The sum of squares of the chunks received, added in flat order (the
  // same bits whichever order they came in).
  double sum_of_squares() const;
  // The segment a shared-memory push's gradient lives in (kept alive by the
  // window's slot until the window closes).
  std::shared_ptr<ShmSegment> segment() const { return segment_; }

 private:
  absl::Status Closed() const;
  absl::Status CheckRange(const ModelLayout::Tensor& t, uint32_t tensor, uint64_t offset, uint64_t n) const;

  const ModelLayout* const layout_;
  const FlatRange range_;
  const uint32_t shard_;
  const v1::PushHeader header_;
  FloatBuffer buffer_;
  BufferPool* const pool_;
  BufferPool::Admission admission_;
  std::shared_ptr<ShmSegment> segment_;
  std::unique_ptr<Accumulator::Push> push_;
  std::function<void()> wake_;
  std::map<uint64_t, double> squares_;  // flat offset -> the chunk's sum of squares
  // Per tensor: begin -> end of the element ranges received (merged).
  std::vector<std::map<uint64_t, uint64_t>> covered_;
  uint64_t covered_elements_ = 0;
  bool accept_non_finite_ = false;
  std::string scratch_;  // a compressed chunk's payload before widening
  const absl::Time arrival_ = absl::Now();
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_PUSH_SESSION_H_
