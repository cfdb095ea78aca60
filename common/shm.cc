#include "common/shm.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace gradacc {
namespace {

constexpr uint64_t kHeaderBytes = 4096;
constexpr uint64_t kDataOffset = uint64_t{2} << 20;

uint64_t SegmentBytes(uint64_t num_elements) {
  const uint64_t data = (num_elements * sizeof(float) + kHeaderBytes - 1) / kHeaderBytes * kHeaderBytes;
  return (num_elements <= (kDataOffset - kHeaderBytes) / sizeof(float) ? kHeaderBytes : kDataOffset) + data;
}

uint64_t DataOffset(uint64_t num_elements) {
  return num_elements <= (kDataOffset - kHeaderBytes) / sizeof(float) ? kHeaderBytes : kDataOffset;
}

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::UnavailableError(absl::StrFormat("%s %s: %s", what, path, std::strerror(errno)));
}

}  // namespace

ShmNonce ShmSegment::NewNonce() {
  absl::BitGen gen;
  return {absl::Uniform<uint64_t>(gen), absl::Uniform<uint64_t>(gen)};
}

std::string ShmSegment::NewPath(const std::string& dir, const ShmNonce& nonce, const std::string& what) {
  return absl::StrFormat("%s/gradacc.%d.%016x.%s", dir, getpid(), nonce[0], what);
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Create(const std::string& path, uint64_t num_elements,
                                                               const ShmNonce& nonce) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create shared-memory segment", path);
  const uint64_t bytes = SegmentBytes(num_elements);
  // Reserve every page now: on a full tmpfs this fails here instead of
  // killing a process with SIGBUS on first touch.
  if (const int e = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); e != 0) {
    close(fd);
    unlink(path.c_str());
    return absl::ResourceExhaustedError(absl::StrFormat("cannot reserve %d bytes of shared memory for %s: %s", bytes,
                                                        path, std::strerror(e)));
  }
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (base == MAP_FAILED) {
    unlink(path.c_str());
    return Errno("cannot map shared-memory segment", path);
  }
  auto* h = new (base) ShmHeader;
  h->magic = kShmMagic;
  h->nonce = nonce;
  h->num_elements = num_elements;
  h->data_offset = DataOffset(num_elements);
  h->seq.store(0, std::memory_order_release);
  return std::unique_ptr<ShmSegment>(new ShmSegment(path, base, bytes, /*owner=*/true));
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Open(const std::string& path, bool writable,
                                                             uint64_t num_elements, const ShmNonce& nonce) {
  const int fd = open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open shared-memory segment", path);
  struct stat st;
  const uint64_t bytes = SegmentBytes(num_elements);
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != bytes) {
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrFormat("shared-memory segment %s has the wrong size for %d elements", path, num_elements));
  }
  // The header's seq is written by readers' atomics only through loads, but
  // a read-only mapping still needs PROT_READ for the header.
  void* base = mmap(nullptr, bytes, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (base == MAP_FAILED) return Errno("cannot map shared-memory segment", path);
  const auto* h = static_cast<const ShmHeader*>(base);
  if (h->magic != kShmMagic || h->nonce != nonce || h->num_elements != num_elements ||
      h->data_offset != DataOffset(num_elements)) {
    munmap(base, bytes);
    return absl::FailedPreconditionError(absl::StrFormat(
        "shared-memory segment %s belongs to another server (nonce or size differ): not the same host", path));
  }
  return std::unique_ptr<ShmSegment>(new ShmSegment(path, base, bytes, /*owner=*/false));
}

int ShmSegment::RemoveStale(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return 0;
  std::vector<std::string> stale;
  while (dirent* e = readdir(d)) {
    std::vector<absl::string_view> parts = absl::StrSplit(e->d_name, '.');
    int pid = 0;
    if (parts.size() != 4 || parts[0] != "gradacc" || !absl::SimpleAtoi(parts[1], &pid) || pid <= 0) continue;
    if (kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(absl::StrCat(dir, "/", e->d_name));
  }
  closedir(d);
  int removed = 0;
  for (const std::string& p : stale) removed += unlink(p.c_str()) == 0;
  return removed;
}

ShmSegment::~ShmSegment() {
  munmap(base_, bytes_);
  if (owner_) unlink(path_.c_str());
}

}  // namespace gradacc
