#include "common/shm_fast_path.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "absl/strings/str_format.h"

namespace gradacc {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::UnavailableError(absl::StrFormat("%s %s: %s", what, path, std::strerror(errno)));
}

void PutU32(char*& p, uint32_t v) {
  std::memcpy(p, &v, sizeof(v));
  p += sizeof(v);
}

bool GetU32(const char*& p, const char* end, uint32_t* v) {
  if (end - p < static_cast<ptrdiff_t>(sizeof(*v))) return false;
  std::memcpy(v, p, sizeof(*v));
  p += sizeof(*v);
  return true;
}

}  // namespace

bool EncodeShmReply(const ShmReply& reply, ShmMailbox* mailbox) {
  constexpr size_t kCapacity = sizeof(mailbox->reply);
  const size_t fixed = 4 * sizeof(uint32_t) + reply.details.size() + reply.body.size();
  if (fixed > kCapacity) return false;
  const size_t message = std::min(reply.message.size(), kCapacity - fixed);
  char* p = mailbox->reply;
  PutU32(p, static_cast<uint32_t>(reply.code));
  for (const absl::string_view part : {absl::string_view(reply.message).substr(0, message),
                                       absl::string_view(reply.details), absl::string_view(reply.body)}) {
    PutU32(p, static_cast<uint32_t>(part.size()));
    std::memcpy(p, part.data(), part.size());
    p += part.size();
  }
  mailbox->reply_bytes = static_cast<uint32_t>(p - mailbox->reply);
  return true;
}

bool DecodeShmReply(const ShmMailbox& mailbox, ShmReply* reply) {
  if (mailbox.reply_bytes > sizeof(mailbox.reply)) return false;
  const char* p = mailbox.reply;
  const char* const end = p + mailbox.reply_bytes;
  uint32_t code;
  if (!GetU32(p, end, &code)) return false;
  reply->code = static_cast<int>(code);
  for (std::string* part : {&reply->message, &reply->details, &reply->body}) {
    uint32_t n;
    if (!GetU32(p, end, &n) || n > static_cast<uint32_t>(end - p)) return false;
    part->assign(p, n);
    p += n;
  }
  return true;
}

void FutexWait(std::atomic<uint32_t>* word, uint32_t expected, absl::Duration timeout) {
  const timespec ts = absl::ToTimespec(std::max(timeout, absl::ZeroDuration()));
  // EAGAIN (the word moved), EINTR and ETIMEDOUT all mean: look again.
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>* word, int waiters) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, waiters, nullptr, nullptr, 0);
}

absl::StatusOr<std::unique_ptr<ShmBellSegment>> ShmBellSegment::Create(const std::string& path, const ShmNonce& nonce) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create shared-memory bell", path);
  if (const int e = posix_fallocate(fd, 0, kShmBellBytes); e != 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    unlink(path.c_str());
    return absl::ResourceExhaustedError(absl::StrFormat("cannot reserve the shared-memory bell %s", path));
  }
  void* base = mmap(nullptr, kShmBellBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    close(fd);
    unlink(path.c_str());
    return Errno("cannot map shared-memory bell", path);
  }
  auto* bell = new (base) ShmBell;
  bell->header.magic = kShmMagic;
  bell->header.nonce = nonce;
  bell->header.num_elements = 0;
  bell->header.data_offset = kShmBellBytes;
  bell->doorbell.store(0, std::memory_order_relaxed);
  bell->published.store(0, std::memory_order_relaxed);
  bell->params_header_bytes = 0;
  std::atomic_thread_fence(std::memory_order_release);
  return std::unique_ptr<ShmBellSegment>(new ShmBellSegment(path, fd, bell, /*owner=*/true));
}

absl::StatusOr<std::unique_ptr<ShmBellSegment>> ShmBellSegment::Open(const std::string& path, const ShmNonce& nonce) {
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open shared-memory bell", path);
  struct stat st;
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != kShmBellBytes) {
    close(fd);
    return absl::FailedPreconditionError(absl::StrFormat("shared-memory bell %s has the wrong size", path));
  }
  void* base = mmap(nullptr, kShmBellBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    close(fd);
    return Errno("cannot map shared-memory bell", path);
  }
  auto* bell = static_cast<ShmBell*>(base);
  if (bell->header.magic != kShmMagic || bell->header.nonce != nonce) {
    munmap(base, kShmBellBytes);
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrFormat("shared-memory bell %s belongs to another server: not the same host", path));
  }
  return std::unique_ptr<ShmBellSegment>(new ShmBellSegment(path, fd, bell, /*owner=*/false));
}

ShmBellSegment::~ShmBellSegment() {
  munmap(bell_, kShmBellBytes);
  if (owner_) unlink(path_.c_str());
  close(fd_);  // the server's flock goes with it
}

bool ShmBellSegment::ServerAlive() const {
  if (flock(fd_, LOCK_SH | LOCK_NB) == 0) {
    flock(fd_, LOCK_UN);
    return false;
  }
  return errno == EWOULDBLOCK;
}

void ShmBellSegment::Ring() {
  bell_->doorbell.fetch_add(1, std::memory_order_release);
  FutexWake(&bell_->doorbell, 1);
}

}  // namespace gradacc
