// PushAssembler: the rules of one push stream, apart from gRPC — the header
// comes first and once, then chunks, then the client half-closes. The
// service's push reactor and the fuzz target both drive it. Not
// thread-safe; the Trainer must outlive it.
#ifndef GRADACC_SERVER_PUSH_ASSEMBLER_H_
#define GRADACC_SERVER_PUSH_ASSEMBLER_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gradacc/v1/data.pb.h"
#include "server/trainer.h"

namespace gradacc {

class PushAssembler {
 public:
  explicit PushAssembler(Trainer* trainer) : trainer_(trainer) {}

  // One message of the stream. After an error the stream is over: the
  // caller finishes it with that status and nothing was counted.
  absl::Status Add(const v1::PushRequest& request);
  // The client half-closed: commit the contribution.
  absl::StatusOr<PushResult> Finish();
  // Drops whatever was received (a broken or cancelled stream) and counts
  // the push as refused for `why`.
  void Abandon(const absl::Status& why);

 private:
  Trainer* const trainer_;
  std::unique_ptr<PushSession> session_;
};

}  // namespace gradacc

#endif  // GRADACC_SERVER_PUSH_ASSEMBLER_H_
