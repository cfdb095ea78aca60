// FloatBuffer: a large, aligned, reusable f32 array.
//
// Big buffers (>= 2 MiB) are 2 MiB aligned and advised as huge pages: on these
// machines a fresh 4 KiB page costs 12-21 us to fault in, so gradacc allocates
// its big buffers once and reuses them. Not thread-safe; move-only; owns its
// memory, except a View, which borrows memory owned elsewhere (a mapped
// shared-memory segment) and frees nothing.
#ifndef GRADACC_COMMON_BUFFER_H_
#define GRADACC_COMMON_BUFFER_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"

namespace gradacc {

class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(size_t size);  // zero-filled
  ~FloatBuffer();
  FloatBuffer(FloatBuffer&& other) noexcept;
  FloatBuffer& operator=(FloatBuffer&& other) noexcept;
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  // Borrows [data, data + size); the owner must outlive the view.
  static FloatBuffer View(float* data, size_t size);
  bool owned() const { return owned_; }

  float* data() { return data_; }
  const float* data() const { return data_; }
  size_t size() const { return size_; }
  absl::Span<float> span() { return absl::MakeSpan(data_, size_); }
  absl::Span<const float> span() const { return absl::MakeConstSpan(data_, size_); }
  float& operator[](size_t i) { return data_[i]; }
  float operator[](size_t i) const { return data_[i]; }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
  bool owned_ = true;
};

// Makes glibc keep freed blocks (up to 64 MiB) for reuse instead of handing
// them back to the kernel, so per-message buffers (gRPC's, protobuf's) stop
// paying fresh page faults; and keep them in one arena, so that what one
// thread frees another reuses (gRPC allocates a receive buffer on whichever
// thread reads the socket: with glibc's arena per thread each arena kept its
// own peak, 8 of them ~420 MiB in a server taking four 64 MiB pushes at once).
// Call once at the start of main(), before any thread starts.
void KeepFreedMemoryForReuse();
// The size from which glibc maps a block of its own (and unmaps it when
// freed) under KeepFreedMemoryForReuse: such blocks are the ones that pay
// fresh page faults every time.
inline constexpr size_t kMappedBlockBytes = size_t{64} << 20;

}  // namespace gradacc

#endif  // GRADACC_COMMON_BUFFER_H_
