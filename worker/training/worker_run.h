// gradacc-worker's run, once its options are parsed: every rank validates
// its options and loads its data, all agree that every rank is ready (so none
// waits for a window a failed rank will never reach), connect (collectively
// with --hierarchical), train, leave, and rank 0 reports the result.
#ifndef GRADACC_WORKER_TRAINING_WORKER_RUN_H_
#define GRADACC_WORKER_TRAINING_WORKER_RUN_H_

#include "worker/training/mpi_scope.h"
#include "worker/training/worker_options.h"

namespace gradacc {

// Collective over MPI_COMM_WORLD. Returns the process's exit code: 0 done,
// 1 training failed, 2 a rank could not start. Messages go to stderr (errors)
// and stdout (rank 0's progress and result).
int RunWorker(const WorkerOptions& options, const MpiScope& mpi);

}  // namespace gradacc

#endif  // GRADACC_WORKER_TRAINING_WORKER_RUN_H_
