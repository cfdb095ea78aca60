// BufferPool: the server's model-sized gradient buffers, reused across
// pushes and windows (a fresh 4 KiB page costs 12-21 us to fault in on these
// machines), and the bound on pushes in flight (each may hold a buffer).
//
// Thread-safe. An Admission is one push's place; it gives the place back
// when destroyed. Buffers are handed out by Take and come back by Return.
#ifndef GRADACC_SERVER_BUFFER_POOL_H_
#define GRADACC_SERVER_BUFFER_POOL_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/buffer.h"
#include "common/mutex.h"

namespace gradacc {

class BufferPool {
 public:
  // A push's place among those in flight; move-only.
  class Admission {
   public:
    Admission() = default;
    Admission(Admission&& other) noexcept : pool_(other.pool_) { other.pool_ = nullptr; }
    Admission& operator=(Admission&& other) noexcept;
    ~Admission() { Release(); }
    void Release();

   private:
    friend class BufferPool;
    explicit Admission(BufferPool* pool) : pool_(pool) {}
    BufferPool* pool_ = nullptr;
  };

  // `elements` per buffer; at most `max_inflight` admissions at once; keeps
  // at most `keep` free buffers.
  BufferPool(size_t elements, int max_inflight, size_t keep);

  // ERROR_REASON_OVERLOADED when max_inflight pushes are in flight.
  absl::StatusOr<Admission> Admit();
  FloatBuffer Take();
  // Buffers of another size, or views, are dropped.
  void Return(FloatBuffer buffer);
  int inflight() const;

 private:
  const size_t elements_;
  const int max_inflight_;
  const size_t keep_;
  mutable Mutex mu_;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<FloatBuffer> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_BUFFER_POOL_H_
