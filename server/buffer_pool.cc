#include "server/buffer_pool.h"

#include "absl/strings/str_format.h"
#include "common/errors.h"

namespace gradacc {

BufferPool::Admission& BufferPool::Admission::operator=(Admission&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    other.pool_ = nullptr;
  }
  return *this;
}

void BufferPool::Admission::Release() {
  if (pool_ == nullptr) return;
  MutexLock lock(&pool_->mu_);
  --pool_->inflight_;
  pool_ = nullptr;
}

BufferPool::BufferPool(size_t elements, int max_inflight, size_t keep)
    : elements_(elements), max_inflight_(max_inflight), keep_(keep) {}

absl::StatusOr<BufferPool::Admission> BufferPool::Admit() {
  MutexLock lock(&mu_);
  if (inflight_ >= max_inflight_) {
    return Refusal(v1::ERROR_REASON_OVERLOADED,
                   absl::StrFormat("%d pushes already in flight; retry later", inflight_));
  }
  ++inflight_;
  return Admission(this);
}

FloatBuffer BufferPool::Take() {
  {
    MutexLock lock(&mu_);
    if (!free_.empty()) {
      FloatBuffer b = std::move(free_.back());
      free_.pop_back();
      return b;
    }
  }
  return FloatBuffer(elements_);
}

void BufferPool::Return(FloatBuffer buffer) {
  if (!buffer.owned() || buffer.size() != elements_) return;
  MutexLock lock(&mu_);
  if (free_.size() < keep_) free_.push_back(std::move(buffer));
}

int BufferPool::inflight() const {
  MutexLock lock(&mu_);
  return inflight_;
}

}  // namespace gradacc
