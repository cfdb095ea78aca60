// ShmFastPath: the server's end of the shared-memory fast path
// (common/shm_fast_path.h). One thread sleeps on the bell's doorbell; when
// a worker rings it, it looks at every attached worker's mailbox, takes
// each request posted there and hands it to the handler (the Trainer's
// FastPush: the same validation, admission, acceptance and answer as a
// shared-memory Push RPC). The handler answers once, on any thread (a push
// that closes its window is answered once its version is published); the
// answer is written back into the mailbox unless the worker has posted a
// newer request since.
//
// Thread-safe. The handler runs on this object's thread and must not block
// on anything that waits for a push.
#ifndef GRADACC_SERVER_SHM_FAST_PATH_H_
#define GRADACC_SERVER_SHM_FAST_PATH_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "gradacc/v1/data.pb.h"
#include "server/shm_transport.h"

namespace gradacc {

class ShmFastPath {
 public:
  using Reply = std::function<void(absl::StatusOr<v1::PushResponse>)>;
  using Handler = std::function<void(uint32_t worker, std::string request, Reply reply)>;

  // `shm` must have a bell and outlive this object.
  ShmFastPath(ShmTransport* shm, Handler handler);
  // Stops and joins the thread; answers still to come are written (or
  // dropped) by whoever holds them.
  ~ShmFastPath();
  ShmFastPath(const ShmFastPath&) = delete;
  ShmFastPath& operator=(const ShmFastPath&) = delete;

  uint64_t requests() const { return requests_.load(std::memory_order_relaxed); }

 private:
  void Loop();
  void TakeRequests();

  ShmTransport* const shm_;
  const Handler handler_;
  // Serialises the answers written into mailboxes (shared with the answers
  // still to come after this object is gone).
  const std::shared_ptr<Mutex> reply_mu_ = std::make_shared<Mutex>();
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> requests_{0};
  std::thread thread_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_SHM_FAST_PATH_H_
