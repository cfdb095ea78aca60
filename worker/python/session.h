// Session: what the Python package's Client (worker/python/gradacc) holds —
// one worker's connection to its job through the C++ client library (a
// Client, or with hierarchical reduction a GroupClient), plus what a
// language binding needs on top: refusing concurrent use from several
// threads, and knowing which memory the views it handed out may still
// point at.
//
// Views. params() and grad() are handed to Python as NumPy arrays over the
// client's own memory (on shared memory, the mapped segments). Each array
// holds a lease (LeaseGrad / LeaseParams, returned by ReleaseLease) that
// keeps the Session, and so that memory, alive, and counts as a live view of
// the window (the "epoch") it was taken in. The client keeps memory it stops
// using (ClientOptions::retain_released_memory: a buffer replaced or a
// segment unmapped when shared memory is attached again after a server
// restart), and the Session frees it at the start of a later Step once no
// view from an older epoch is alive. So a view kept across Step() never
// points at freed or unmapped memory; the Python layer also makes such
// stale views read-only.
//
// Thread safety: the client is thread-compatible; every method that touches
// it enters with TryLock and fails with FAILED_PRECONDITION when another
// thread is inside (Step runs without the GIL, so another Python thread
// could call in meanwhile). Leases may be taken and returned on any thread
// (their counts have their own lock). Owns the client; shared
// (std::shared_ptr) by the Python Client object and every lease.
#ifndef GRADACC_WORKER_PYTHON_SESSION_H_
#define GRADACC_WORKER_PYTHON_SESSION_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job_spec.h"
#include "common/mutex.h"
#include "worker/client/client.h"
#include "worker/training/group_client.h"

namespace gradacc::python {

class Session {
 public:
  // A flat worker: Client::Connect. With `hierarchical`, GroupClient::Connect
  // (collective over MPI_COMM_WORLD, which must be initialised).
  static absl::StatusOr<std::shared_ptr<Session>> Connect(ClientOptions options, bool hierarchical);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Constant after Connect.
  const v1::JobSpec& job() const { return job_; }
  const ModelLayout& layout() const { return layout_; }
  bool hierarchical() const { return hierarchical_; }
  // A hierarchical worker that is not its group's leader reaches the server
  // only through its leader (no status, no reports of its own).
  bool leader() const { return leader_; }
  uint32_t worker() const { return worker_; }

  // What the client holds now (for the Python properties).
  struct State {
    uint64_t version = 0;
    bool done = false;
    float loss_scale = 0;  // the open window's (a loss-scaling job; else 0)
    uint64_t epoch = 0;  // windows ended through this session
    uint64_t pending_samples = 0;
    uint32_t pending_micro_batches = 0;
    std::string transport;
  };
  absl::StatusOr<State> state();

  // A view of the current memory: its first element and the epoch it
  // belongs to. The memory stays allocated until ReleaseLease(epoch) (one
  // call per lease), and holds this window's values until the next Step.
  struct Lease {
    float* data = nullptr;
    uint64_t epoch = 0;
  };
  absl::StatusOr<Lease> LeaseGrad();
  // The parameters are never to be written (on shared memory they are the
  // server's read-only segment).
  absl::StatusOr<Lease> LeaseParams();
  void ReleaseLease(uint64_t epoch);

  absl::Status AddMicroBatch(uint64_t samples, double loss_sum);
  // TrainingClient::Discard (the views stay valid: same memory, zeroed).
  absl::Status Discard();
  // TrainingClient::SetUntouched.
  absl::Status SetUntouched(std::vector<uint32_t> tensors);
  // Blocking: the caller releases the GIL.
  absl::StatusOr<StepResult> Step();
  absl::StatusOr<v1::Status> GetStatus();
  absl::Status ReportTestAccuracy(double accuracy, uint64_t step);
  absl::Status Leave();
  // No more calls. The client (its channels and memory) is freed now when
  // no lease is alive, else when the Session goes (after the last lease).
  absl::Status Close();

  // MPI is being finalised while this session's GroupClient is alive: its
  // destructor (MPI_Comm_free) must never run after MPI_Finalize, so the
  // GroupClient is leaked on purpose and the session closed.
  void AbandonGroupBeforeMpiFinalize();

 private:
  Session() = default;
  // Enters the session (try-lock of busy_) or says why not: another thread
  // is inside, or the session is closed.
  absl::Status Enter(const char* what) ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true, busy_);
  void Exit() ABSL_UNLOCK_FUNCTION(busy_);
  // Frees the memory the client retired when no view of an older epoch is
  // left.
  void MaybeReleaseRetired() ABSL_EXCLUSIVE_LOCKS_REQUIRED(busy_);

  // Constant after Connect.
  v1::JobSpec job_;
  ModelLayout layout_;
  bool hierarchical_ = false;
  bool leader_ = true;
  uint32_t worker_ = 0;

  gradacc::Mutex busy_;  // held by the thread using the client (TryLock only)
  std::unique_ptr<Client> client_ ABSL_GUARDED_BY(busy_);      // flat worker
  std::unique_ptr<GroupClient> group_ ABSL_GUARDED_BY(busy_);  // hierarchical worker
  std::unique_ptr<ClientAdapter> adapter_;                     // over client_
  TrainingClient* training_ ABSL_GUARDED_BY(busy_) = nullptr;  // adapter_ or group_
  bool closed_ ABSL_GUARDED_BY(busy_) = false;
  uint64_t epoch_ ABSL_GUARDED_BY(busy_) = 0;

  gradacc::Mutex lease_mu_;
  std::map<uint64_t, int64_t> live_leases_ ABSL_GUARDED_BY(lease_mu_);  // epoch -> views alive
};

}  // namespace gradacc::python

#endif  // GRADACC_WORKER_PYTHON_SESSION_H_
