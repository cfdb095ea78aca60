// CallGroup: calls made together, one per shard, that are only useful all
// together (pulls of one version). The first failure cancels the others:
// a pull parked on shard 0 may wait for a step that needs what shard 2 just
// refused (it restarted and lost this worker's push), so waiting for it
// would only run out the window's deadline.
//
// Thread-safe. A registered context must be removed before it is
// destroyed.
#ifndef GRADACC_WORKER_CLIENT_CALL_GROUP_H_
#define GRADACC_WORKER_CLIENT_CALL_GROUP_H_

#include <algorithm>
#include <vector>

#include <grpcpp/client_context.h>

#include "absl/base/thread_annotations.h"
#include "common/mutex.h"

namespace gradacc {

class CallGroup {
 public:
  // False when the group already failed: do not start the call.
  bool Add(grpc::ClientContext* ctx) {
    MutexLock lock(&mu_);
    if (failed_) return false;
    calls_.push_back(ctx);
    return true;
  }
  void Remove(grpc::ClientContext* ctx) {
    MutexLock lock(&mu_);
    calls_.erase(std::remove(calls_.begin(), calls_.end(), ctx), calls_.end());
  }
  // Cancels every registered call; later Adds fail.
  void Fail() {
    MutexLock lock(&mu_);
    failed_ = true;
    for (grpc::ClientContext* ctx : calls_) ctx->TryCancel();
  }

 private:
  Mutex mu_;
  std::vector<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mu_);
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace gradacc

#endif  // GRADACC_WORKER_CLIENT_CALL_GROUP_H_
