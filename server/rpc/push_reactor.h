// PushReactor: one push stream, on the raw (ByteBuffer) method so that a
// chunk's payload is copied once, from gRPC's receive slices into the push's
// private buffer (common/wire.h). The first message must be the header;
// chunks are validated and placed as they arrive (PushAssembler); the contribution is committed when the client
// half-closes a complete stream. On an unsharded server a push that
// completes its window is answered once the new version is published
// (PushResponse.version_published); a shard answers it once counted.
// A stream that outlives the server's push timeout is cancelled.
//
// Owns itself (deleted in OnDone); the Trainer must outlive it.
#ifndef GRADACC_SERVER_RPC_PUSH_REACTOR_H_
#define GRADACC_SERVER_RPC_PUSH_REACTOR_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <memory>

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
  // Lets the push-timeout callback cancel the call while it exists.
  struct CancelState {
    Mutex mu;
    grpc::CallbackServerContext* context ABSL_GUARDED_BY(mu) = nullptr;
  };
  void Complete();
  void Reply(const absl::Status& status);

  Trainer* const trainer_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const response_;  // serialised from reply_ when OK
  v1::PushResponse reply_;
  grpc::ByteBuffer request_;
  PushAssembler assembler_;
  std::shared_ptr<CancelState> cancel_;
  uint64_t handle_ = 0;
  Mutex mu_;
  uint64_t wait_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_PUSH_REACTOR_H_
