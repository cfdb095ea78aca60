// PushAssembler: the rules of one push stream, apart from gRPC — the header
// comes first and once, then chunks, then the client half-closes. The
// service's push reactor and the fuzz target both drive it. Not
// thread-safe; the Trainer must outlive it.
#ifndef GRADACC_SERVER_PUSH_ASSEMBLER_H_
#define GRADACC_SERVER_PUSH_ASSEMBLER_H_

#include <grpcpp/support/byte_buffer.h>

#include <functional>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gradacc/v1/data.pb.h"
#include "server/trainer.h"

namespace gradacc {

class PushAssembler {
 public:
  // `wake` (optional) runs, on another thread, when a parked message may be
  // offered again; without it nothing parks.
  explicit PushAssembler(Trainer* trainer, std::function<void()> wake = nullptr)
      : trainer_(trainer), wake_(std::move(wake)) {}

  // One message of the stream. After an error the stream is over: the
  // caller finishes it with that status and nothing was counted — except
  // Parked() (server/push_session.h): nothing was read; offer the same
  // message again after the wake.
  absl::Status Add(const v1::PushRequest& request);
  // The same for a message as it came off the wire: a chunk's payload is
  // copied once, from gRPC's slices to its place (common/wire.h); anything
  // else is parsed as a PushRequest.
  absl::Status Add(grpc::ByteBuffer& message);
  // The client half-closed: commit the contribution.
  absl::StatusOr<PushResult> Finish();
  // Drops whatever was received (a broken or cancelled stream) and counts
  // the push as refused for `why`.
  void Abandon(const absl::Status& why);

 private:
  // Counts the refusal and ends the stream's session.
  absl::Status Refuse(absl::Status status);

  Trainer* const trainer_;
  const std::function<void()> wake_;
  std::unique_ptr<PushSession> session_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_PUSH_ASSEMBLER_H_
