// A scriptable in-process gradacc server for client tests: it answers Join,
// Push, Pull, Leave and AttachSharedMemory like a one-shard server of a tiny
// one-worker job (each accepted push closes the window), except where a test
// scripts a refusal. It listens on 127.0.0.1 with a port the OS chose.
// Thread-safe (gRPC calls it from its threads; tests script and inspect it
// from theirs).
#ifndef GRADACC_TESTS_FAKE_DATA_PLANE_H_
#define GRADACC_TESTS_FAKE_DATA_PLANE_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/mutex.h"
#include "gradacc/v1/data.grpc.pb.h"

namespace gradacc::testing {

class FakeDataPlane final : public v1::DataPlane::Service {
 public:
  enum class Call { kJoin, kPush, kPull, kLeave };

  // Starts serving the job `job_id`: tensors "w" [4, 3] and "b" [3], one
  // worker, `total_steps` steps. Parameters of version v are all v.
  static std::unique_ptr<FakeDataPlane> Start(uint64_t total_steps = 100);
  ~FakeDataPlane() override;

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  static constexpr uint64_t kElements = 4 * 3 + 3;

  // The next calls of `call` are refused with these statuses, one each, in
  // order (as a real server sends them: reason in the gRPC status details).
  void Script(Call call, std::vector<absl::Status> refusals);
  // Every call of `call` is refused with `refusal` until Clear.
  void Always(Call call, absl::Status refusal);
  void Clear();
  // The next pull is refused with ERROR_REASON_CONTRIBUTION_LOST and the
  // server goes back one version, as a server restarted from a checkpoint
  // taken before the last push was acknowledged.
  void LoseNextContribution();
  // The server's parameter version (a restarted server may be behind).
  void set_version(uint64_t version);
  uint64_t version();

  int calls(Call call);
  std::vector<v1::JoinRequest> joins();
  // Every push accepted, lost ones included, in order.
  std::vector<v1::PushHeader> accepted_pushes();

  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest* request, v1::JoinResponse* response) override;
  grpc::Status Push(grpc::ServerContext* ctx, grpc::ServerReader<v1::PushRequest>* reader,
                    v1::PushResponse* response) override;
  grpc::Status Pull(grpc::ServerContext* ctx, const v1::PullRequest* request,
                    grpc::ServerWriter<v1::PullResponse>* writer) override;
  grpc::Status Leave(grpc::ServerContext* ctx, const v1::LeaveRequest* request, v1::LeaveResponse* response) override;
  grpc::Status AttachSharedMemory(grpc::ServerContext* ctx, const v1::AttachSharedMemoryRequest* request,
                                  v1::AttachSharedMemoryResponse* response) override;

 private:
  struct CallScript {
    std::deque<absl::Status> next;
    absl::Status always;
    int calls = 0;
  };
  explicit FakeDataPlane(uint64_t total_steps) : total_steps_(total_steps) {}
  // Counts a call; the refusal it gets, if any.
  absl::Status Refused(Call call);

  const uint64_t total_steps_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  Mutex mu_;
  CallScript scripts_[4] ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  bool lose_next_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<v1::JoinRequest> joins_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::PushHeader> accepted_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gradacc::testing

#endif  // GRADACC_TESTS_FAKE_DATA_PLANE_H_
