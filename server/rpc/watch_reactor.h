// WatchReactor: WatchStatus. Writes the newest status whenever the Trainer
// notifies; notifications that arrive while a write is in flight coalesce
// into one. Ends with SHUTTING_DOWN when the server stops.
//
// Owns itself (deleted in OnDone); the Trainer must outlive it.
#ifndef GRADACC_SERVER_RPC_WATCH_REACTOR_H_
#define GRADACC_SERVER_RPC_WATCH_REACTOR_H_

#include <grpcpp/support/server_callback.h>

#include <memory>

#include "common/mutex.h"
#include "gradacc/v1/control.pb.h"
#include "server/trainer.h"

namespace gradacc {

class WatchReactor final : public grpc::ServerWriteReactor<v1::Status> {
 public:
  explicit WatchReactor(Trainer* trainer);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // Outlives the reactor while a listener call may still be running.
  struct Shared {
    Mutex mu;
    WatchReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool dirty ABSL_GUARDED_BY(mu) = false;
    bool stopped ABSL_GUARDED_BY(mu) = false;

    void Notify();
    void WriteDone();
    // True for the first caller: it finishes the call.
    bool Stop();
    void Detach();
  };

  // Called by Shared with its mutex (state_->mu) held.
  void WriteLatest();

  Trainer* const trainer_;
  std::shared_ptr<Shared> state_;
  uint64_t listener_id_ = 0;
  v1::Status status_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_WATCH_REACTOR_H_
