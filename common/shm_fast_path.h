// The shared-memory fast path (issue 24): a worker on the server's host
// pushes and pulls a window without a gRPC round trip. gRPC stays for join,
// attach, leave, status and every error path; the fast path carries only
// what a shared-memory window's Push and Pull carried (a PushHeader, its
// answer, and the published version's ParametersHeader), and the server
// handles them with the same code, so their semantics and errors are those
// of the RPCs (docs/protocol.md, "The shared-memory fast path").
//
// Two places hold its words:
//  - the bell, a 4 KiB segment of its own (ShmBell), one per server, mapped
//    writable by every attached worker: `doorbell` (a worker adds one and
//    wakes the server's fast-path thread after posting a request), and the
//    serialized ParametersHeader of the version published last under a
//    seqlock of its own, `published` (odd while the server rewrites it;
//    the server wakes every waiter after each version, once its step is in
//    the ledger — where a Pull would be answered). A worker takes a version
//    when the header names it and the parameter segment's seqlock holds it
//    before and after the read. The server holds an exclusive flock on the bell's
//    file while it lives: a worker that can take a shared one knows the
//    server is gone (killed or not) without waiting for a timeout;
//  - a mailbox (ShmMailbox) in each gradient segment's header page (bytes
//    64..4096, unused before): one request and one reply.
//
// A mailbox's `slot` is (seq << 2) | state. The worker writes a request
// only when no request of its is REQUESTED, then stores (seq, REQUESTED).
// The server copies the request and then compare-and-swaps (seq, REQUESTED)
// to (seq, TAKEN); a worker that gives up first swaps it to (seq,
// CANCELLED) instead, so exactly one of them wins and a request the server
// copied while it was being rewritten is dropped. The server writes the
// reply of seq only while the slot still names seq, then stores seq in
// `reply_seq`: a reply to an abandoned request never overwrites a newer one
// while the worker reads it.
//
// Every wait is bounded (futex waits of at most kShmPollInterval between
// looks at the clock and at the server's flock).
#ifndef GRADACC_COMMON_SHM_FAST_PATH_H_
#define GRADACC_COMMON_SHM_FAST_PATH_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/shm.h"

namespace gradacc {

inline constexpr uint64_t kShmBellBytes = 4096;
inline constexpr uint64_t kShmMailboxOffset = 64;
inline constexpr absl::Duration kShmPollInterval = absl::Milliseconds(20);
// How long a worker waits on the bell for a version before it pulls through
// gRPC (which parks the pull and tells the server the worker is alive).
inline constexpr absl::Duration kShmFastPullWait = absl::Milliseconds(250);

struct ShmBell {
  ShmHeader header;  // num_elements 0; seq unused
  std::atomic<uint32_t> doorbell;
  // 0: nothing published yet; odd: being rewritten; even: stable.
  std::atomic<uint32_t> published;
  // Bytes of `params_header`; 0 when the header did not fit (the worker
  // then pulls through gRPC).
  uint32_t params_header_bytes;
  uint32_t reserved;
  char params_header[kShmBellBytes - 128];
};
static_assert(sizeof(ShmBell) <= kShmBellBytes);
// The offsets docs/protocol.md gives to clients in other languages.
static_assert(offsetof(ShmBell, doorbell) == 48 && offsetof(ShmBell, published) == 52 &&
              offsetof(ShmBell, params_header_bytes) == 56 && offsetof(ShmBell, params_header) == 64);

struct ShmMailbox {
  enum State : uint32_t { kFree = 0, kRequested = 1, kTaken = 2, kCancelled = 3 };
  static uint32_t Slot(uint32_t seq, State state) { return (seq << 2) | state; }
  static uint32_t SeqOf(uint32_t slot) { return slot >> 2; }
  static State StateOf(uint32_t slot) { return static_cast<State>(slot & 3); }

  std::atomic<uint32_t> slot;
  std::atomic<uint32_t> reply_seq;
  uint32_t request_bytes;
  uint32_t reply_bytes;
  // Versions the worker took through the bell (the server counts their
  // bytes as sent, as it counts a Pull's).
  std::atomic<uint32_t> pulls;
  uint32_t reserved[3];
  char request[1536];
  char reply[4096 - kShmMailboxOffset - 32 - 1536];
};
static_assert(kShmMailboxOffset + sizeof(ShmMailbox) <= 4096);
static_assert(offsetof(ShmMailbox, reply_seq) == 4 && offsetof(ShmMailbox, request_bytes) == 8 &&
              offsetof(ShmMailbox, reply_bytes) == 12 && offsetof(ShmMailbox, pulls) == 16 &&
              offsetof(ShmMailbox, request) == 32 && offsetof(ShmMailbox, reply) == 32 + 1536);

// The mailbox in a gradient segment's header page.
inline ShmMailbox* MailboxOf(const ShmSegment& segment) {
  return reinterpret_cast<ShmMailbox*>(reinterpret_cast<char*>(segment.header()) + kShmMailboxOffset);
}

// A reply: the gRPC status code, its message and binary details (the
// google.rpc.Status the RPC would carry in grpc-status-details-bin), and on
// OK the serialized answer. Encoded into ShmMailbox::reply; a message that
// does not fit is cut.
struct ShmReply {
  int code = 0;
  std::string message;
  std::string details;
  std::string body;
};
// False when details and body alone do not fit.
bool EncodeShmReply(const ShmReply& reply, ShmMailbox* mailbox);
bool DecodeShmReply(const ShmMailbox& mailbox, ShmReply* reply);

// futex(2) on a word of a shared mapping (not FUTEX_PRIVATE: the waiters are
// other processes). Wait returns after a wake, when *word != expected, or
// after `timeout`.
void FutexWait(std::atomic<uint32_t>* word, uint32_t expected, absl::Duration timeout);
void FutexWake(std::atomic<uint32_t>* word, int waiters);

// The bell segment: created by the server (which flocks it while it lives),
// opened by workers.
class ShmBellSegment {
 public:
  static absl::StatusOr<std::unique_ptr<ShmBellSegment>> Create(const std::string& path, const ShmNonce& nonce);
  static absl::StatusOr<std::unique_ptr<ShmBellSegment>> Open(const std::string& path, const ShmNonce& nonce);
  ~ShmBellSegment();
  ShmBellSegment(const ShmBellSegment&) = delete;
  ShmBellSegment& operator=(const ShmBellSegment&) = delete;

  ShmBell* bell() const { return bell_; }
  const std::string& path() const { return path_; }
  // Workers: whether the server that created the bell still holds it.
  bool ServerAlive() const;
  // Rings: the server's fast-path thread looks at every mailbox.
  void Ring();

 private:
  ShmBellSegment(std::string path, int fd, ShmBell* bell, bool owner)
      : path_(std::move(path)), fd_(fd), bell_(bell), owner_(owner) {}
  const std::string path_;
  const int fd_;
  ShmBell* const bell_;
  const bool owner_;
};

}  // namespace gradacc

#endif  // GRADACC_COMMON_SHM_FAST_PATH_H_
