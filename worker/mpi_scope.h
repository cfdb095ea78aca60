// MpiScope: MPI initialised for the lifetime of the object and finalised by
// its destructor (RAII). gradacc uses MPI to launch workers (rank = worker
// identity) and to agree on start-up; the data plane is gRPC.
#ifndef GRADACC_WORKER_MPI_SCOPE_H_
#define GRADACC_WORKER_MPI_SCOPE_H_

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

 private:
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace gradacc

#endif  // GRADACC_WORKER_MPI_SCOPE_H_
