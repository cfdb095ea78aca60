#include "common/buffer.h"

#include <malloc.h>
#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace gradacc {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;

}  // namespace

FloatBuffer::FloatBuffer(size_t size) : size_(size) {
  if (size == 0) return;
  const size_t bytes = size * sizeof(float);
  const size_t align = bytes >= kHugePage ? kHugePage : 64;
  const size_t rounded = (bytes + align - 1) / align * align;
  void* p = nullptr;
  if (posix_memalign(&p, align, rounded) != 0) throw std::bad_alloc();
  if (align == kHugePage) madvise(p, rounded, MADV_HUGEPAGE);
  std::memset(p, 0, rounded);
  data_ = static_cast<float*>(p);
}

FloatBuffer FloatBuffer::View(float* data, size_t size) {
  FloatBuffer b;
  b.data_ = data;
  b.size_ = size;
  b.owned_ = false;
  return b;
}

FloatBuffer::~FloatBuffer() {
  if (owned_) std::free(data_);
}

FloatBuffer::FloatBuffer(FloatBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      owned_(std::exchange(other.owned_, true)) {}

FloatBuffer& FloatBuffer::operator=(FloatBuffer&& other) noexcept {
  if (this != &other) {
    if (owned_) std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owned_ = std::exchange(other.owned_, true);
  }
  return *this;
}

void KeepFreedMemoryForReuse() {
  mallopt(M_MMAP_THRESHOLD, static_cast<int>(kMappedBlockBytes));
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_ARENA_MAX, 1);
}

}  // namespace gradacc
