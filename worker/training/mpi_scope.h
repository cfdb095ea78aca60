// MpiScope: MPI initialised for the lifetime of the object and finalised by
// Finish (bounded under recovery) or else by its destructor (RAII). gradacc
// uses MPI to launch workers (rank = worker identity) and to agree on
// start-up; the data plane is gRPC. A process
// started without mpirun is a world of one rank (MPI's singleton mode), which
// is how the unit tests use it. At most one per process (MPI cannot be
// initialised twice); thread-compatible.
#ifndef GRADACC_WORKER_TRAINING_MPI_SCOPE_H_
#define GRADACC_WORKER_TRAINING_MPI_SCOPE_H_

#include "absl/time/time.h"

namespace gradacc {

class MpiScope {
 public:
  MpiScope(int* argc, char*** argv);
  ~MpiScope();
  MpiScope(const MpiScope&) = delete;
  MpiScope& operator=(const MpiScope&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // True on every rank when `ok` is true on every rank (a collective).
  bool AllOk(bool ok) const;
  void Barrier() const;
  // Finalises MPI and returns `exit_code`. Under `mpirun --enable-recovery`
  // a finalize that does not return within `bound` (it waits for every rank,
  // and a lost rank never arrives) ends the process with `exit_code`.
  int Finish(int exit_code, absl::Duration bound = absl::Seconds(5));

 private:
  int rank_ = 0;
  int size_ = 1;
  bool finalized_ = false;
};

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_MPI_SCOPE_H_
