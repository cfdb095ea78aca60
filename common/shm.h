// Shared-memory segments: how workers on the server's host exchange
// gradients and parameters with it without TCP (gRPC stays the control
// plane that negotiates them).
//
// A segment is a file in a tmpfs folder (/dev/shm by default) created by the
// server: mode 0600, a name holding the server's pid and a random part, its
// pages reserved with posix_fallocate (so a full tmpfs, e.g. a container's
// 64 MiB /dev/shm, is an error at creation rather than a SIGBUS later). A
// worker maps it after gRPC told it the path and the nonce; the nonce in the
// header proves it mapped the segment of the server it talked to (same host,
// same server instance).
//
// Layout: a 4 KiB header, then num_elements f32 at a 2 MiB boundary.
// Thread-compatible; the mapping lives until the object is destroyed (the
// creator also unlinks the file then).
#ifndef GRADACC_COMMON_SHM_H_
#define GRADACC_COMMON_SHM_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace gradacc {

inline constexpr uint64_t kShmMagic = 0x3143434144415247ull;  // "GRADACC1"

using ShmNonce = std::array<uint64_t, 2>;

struct ShmHeader {
  uint64_t magic;
  ShmNonce nonce;
  uint64_t num_elements;
  uint64_t data_offset;
  // Parameter segments: 2 * version while that version is in place, odd
  // while the server overwrites it (a seqlock: a reader that sees the same
  // even value before and after reading has a consistent copy).
  std::atomic<uint64_t> seq;
};

class ShmSegment {
 public:
  // A fresh random nonce.
  static ShmNonce NewNonce();
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Create(const std::string& path, uint64_t num_elements,
                                                            const ShmNonce& nonce);
  // Maps an existing segment; fails unless its header carries `nonce` and
  // `num_elements`.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Open(const std::string& path, bool writable,
                                                          uint64_t num_elements, const ShmNonce& nonce);
  // Removes segments in `dir` left by gradacc servers that are gone (the pid
  // in their name is not alive). Returns how many.
  static int RemoveStale(const std::string& dir);
  // "<dir>/gradacc.<pid>.<random>.<what>"
  static std::string NewPath(const std::string& dir, const ShmNonce& nonce, const std::string& what);

  ~ShmSegment();
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  ShmHeader* header() const { return static_cast<ShmHeader*>(base_); }
  float* data() const { return reinterpret_cast<float*>(static_cast<char*>(base_) + header()->data_offset); }
  uint64_t num_elements() const { return header()->num_elements; }
  const std::string& path() const { return path_; }

 private:
  ShmSegment(std::string path, void* base, size_t bytes, bool owner)
      : path_(std::move(path)), base_(base), bytes_(bytes), owner_(owner) {}

  const std::string path_;
  void* const base_;
  const size_t bytes_;
  const bool owner_;
};

}  // namespace gradacc

#endif  // GRADACC_COMMON_SHM_H_
