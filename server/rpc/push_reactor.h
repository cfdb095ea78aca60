// PushReactor: one push stream, on the raw (ByteBuffer) method so that a
// chunk's payload is copied once, from gRPC's receive slices into the push's
// private buffer (common/wire.h). The first message must be the header;
// chunks are validated and placed as they arrive (PushAssembler); the contribution is committed when the client
// half-closes a complete stream. On an unsharded server a push that
// completes its window is answered once the new version is published
// (PushResponse.version_published); a shard answers it once counted.
// A stream that outlives the server's push timeout is finished with
// PUSH_TIMEOUT while it is still being received (a read outstanding ends
// with OnReadDone(false)); one already committed and waiting for its
// version is cancelled.
//
// One message is read ahead while the previous one is placed, so the
// client's next chunk travels while this one is copied and added. A chunk
// that must wait for its turn (the window's staging pool is full) parks the
// stream: no further read is started, so gRPC's flow control holds the
// client, until the Accumulator's wake resumes it on another thread.
//
// Owns itself (deleted once OnDone ran and no wake is running it); the
// Trainer must outlive it.
#ifndef GRADACC_SERVER_RPC_PUSH_REACTOR_H_
#define GRADACC_SERVER_RPC_PUSH_REACTOR_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <atomic>
#include <memory>

#include "absl/strings/string_view.h"
#include "common/mutex.h"
#include "gradacc/v1/data.pb.h"
#include "server/push_assembler.h"
#include "server/trainer.h"

namespace gradacc {

class PushReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  PushReactor(Trainer* trainer, grpc::CallbackServerContext* context, grpc::ByteBuffer* response);

  void OnReadDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // Lets the Accumulator's wake and the push timeout find the reactor while
  // it exists.
  struct ResumeState {
    Mutex mu;
    PushReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
  };
  // The one thread that places messages (busy_): takes what arrived, reads
  // ahead, offers it; parks, finishes the call, or returns when nothing is
  // left to place.
  void Drain();
  // The stream ended (eof_, nothing left to place): commit, or abandon a
  // cancelled push.
  void End();
  // Abandons the push (PUSH_TIMEOUT, counted as refused) and finishes the
  // call.
  void Cancelled(absl::string_view what);
  // A parked stream's wake (any thread).
  void Resume();
  // The push timeout's callback (the deadline thread).
  void TimedOut();
  // Runs `f` on the reactor while it exists (a reference held meanwhile).
  static void WithReactor(const std::shared_ptr<ResumeState>& state, void (PushReactor::*f)());
  void Unref();
  void Complete();
  void Reply(const absl::Status& status);

  Trainer* const trainer_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;  // serialised from reply_ when OK
  v1::PushResponse reply_;
  grpc::ByteBuffer request_;             // gRPC's while reading_; then arrived_ until taken
  grpc::ByteBuffer current_;             // the message being placed (or parked)
  std::shared_ptr<ResumeState> resume_;  // before assembler_, whose wake holds it
  PushAssembler assembler_;
  uint64_t handle_ = 0;
  std::atomic<int> refs_{1};  // OnDone's, and one per wake running
  Mutex mu_;
  uint64_t wait_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;  // a StartRead is outstanding
  bool arrived_ ABSL_GUARDED_BY(mu_) = false;  // request_ holds a message not taken yet
  bool eof_ ABSL_GUARDED_BY(mu_) = false;      // no more messages (half-close, cancel, error)
  bool busy_ ABSL_GUARDED_BY(mu_) = false;     // a thread is in Drain
  bool holding_ ABSL_GUARDED_BY(mu_) = false;  // current_ holds a message not placed yet
  bool parked_ ABSL_GUARDED_BY(mu_) = false;
  bool woken_ ABSL_GUARDED_BY(mu_) = false;      // a wake came before the stream parked
  bool timed_out_ ABSL_GUARDED_BY(mu_) = false;  // past the push timeout: Drain finishes the call
  bool committed_ ABSL_GUARDED_BY(mu_) = false;  // End ran: the push waits for its answer
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_PUSH_REACTOR_H_
