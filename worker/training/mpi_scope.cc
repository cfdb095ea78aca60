#include "worker/training/mpi_scope.h"

#include <mpi.h>

namespace gradacc {

MpiScope::MpiScope(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiScope::~MpiScope() { MPI_Finalize(); }

bool MpiScope::AllOk(bool ok) const {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

void MpiScope::Barrier() const { MPI_Barrier(MPI_COMM_WORLD); }

}  // namespace gradacc
