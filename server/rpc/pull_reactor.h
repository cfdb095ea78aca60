// PullReactor: one pull. Validated by the job's one RequestValidator, then
// parked with the Trainer until the version exists; then streams the shared,
// pre-serialised snapshot (header, then chunks) — or only the header to a
// worker that reads the parameters from shared memory. On the raw
// (ByteBuffer) method: a chunk is written as the snapshot holds it, so N
// pulls of a version cost no serialisation and no copy. A snapshot published
// without chunks has them built on the trainer thread (never a thread of
// the reactor's own).
//
// Owns itself (deleted in OnDone); the Trainer must outlive it.
#ifndef GRADACC_SERVER_RPC_PULL_REACTOR_H_
#define GRADACC_SERVER_RPC_PULL_REACTOR_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <memory>

#include "common/tsan.h"
#include "common/mutex.h"
#include "gradacc/v1/data.pb.h"
#include "server/trainer.h"

namespace gradacc {

class PullReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  PullReactor(Trainer* trainer, const v1::PullRequest& request);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override {
    TsanAcquire(this);
    TsanRelease(&kTsanServerRpcsDone);
    delete this;
  }

 private:
  void OnSnapshot(absl::StatusOr<std::shared_ptr<const ParamSnapshot>> snapshot);
  void Stream(std::shared_ptr<const ParamSnapshot> snapshot);
  void Done(const absl::Status& status);

  Trainer* const trainer_;
  const int64_t worker_;
  bool shared_memory_ = false;
  std::shared_ptr<const ParamSnapshot> snapshot_;
  grpc::ByteBuffer header_;  // the serialised header
  size_t next_chunk_ = 0;
  Mutex mu_;
  uint64_t wait_id_ ABSL_GUARDED_BY(mu_) = 0;
  bool resolved_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_RPC_PULL_REACTOR_H_
