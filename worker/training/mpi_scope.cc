#include "worker/training/mpi_scope.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"

namespace gradacc {
namespace {

// mpirun --enable-recovery puts this in every rank's environment.
bool RecoveryEnabled() {
  const char* v = std::getenv("OMPI_MCA_orte_enable_recovery");
  return v != nullptr && (std::string_view(v) == "1" || std::string_view(v) == "true");
}

}  // namespace

MpiScope::MpiScope(int* argc, char*** argv) {
  MPI_Init(argc, argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

MpiScope::~MpiScope() {
  if (!finalized_) MPI_Finalize();
}

int MpiScope::Finish(int exit_code, absl::Duration bound) {
  finalized_ = true;
  if (!RecoveryEnabled() || size_ == 1) {
    MPI_Finalize();
    return exit_code;
  }
  // Open MPI's MPI_Finalize is a fence over every rank of the job; after a
  // rank was lost it may never complete (a race with the runtime noticing
  // the death; the survivors spin in it). Under
  // --enable-recovery a rank that exits without finalising does not take
  // the job down, so the bounded way out is safe there.
  absl::Notification done;
  std::thread watchdog([&done, exit_code, bound, rank = rank_] {
    if (done.WaitForNotificationWithTimeout(bound)) return;
    absl::FPrintF(stderr,
                  "gradacc-worker[%d]: MPI_Finalize did not return within %s (it waits for every rank, and one "
                  "may have been lost); exiting without it\n",
                  rank, absl::FormatDuration(bound));
    std::fflush(nullptr);
    ::_exit(exit_code);
  });
  MPI_Finalize();
  done.Notify();
  watchdog.join();
  return exit_code;
}

bool MpiScope::AllOk(bool ok) const {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

void MpiScope::Barrier() const { MPI_Barrier(MPI_COMM_WORLD); }

}  // namespace gradacc
