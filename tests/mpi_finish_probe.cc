// A two-rank MPI program for RankSurvivalTest: rank 1 stops itself before
// finalising (a peer that never arrives), rank 0 finalises through
// MpiScope::Finish with a 2 s bound and exit code 7.
#include <csignal>

#include "absl/time/time.h"
#include "worker/training/mpi_scope.h"

int main(int argc, char** argv) {
  gradacc::MpiScope mpi(&argc, &argv);
  if (mpi.rank() != 0) std::raise(SIGSTOP);
  return mpi.Finish(7, absl::Seconds(2));
}
