// MpiEnv: MPI for a Python process. The Python package needs MPI only for
// hierarchical reduction (GroupClient) and for broadcasting non-parameter
// buffers (gradacc.torch); a plain worker never initialises it. Python
// loads extensions with RTLD_LOCAL, and Open MPI's plugins need libmpi's
// symbols global, so Initialize re-opens libmpi with RTLD_GLOBAL first (as
// mpi4py does). Finalize leaks any GroupClient still alive on purpose (see
// Session::AbandonGroupBeforeMpiFinalize): a communicator freed after
// MPI_Finalize aborts the process.
//
// Free functions over process-wide MPI state; call them from one thread at
// a time (MPI is initialised MPI_THREAD_SERIALIZED).
#ifndef GRADACC_WORKER_PYTHON_MPI_ENV_H_
#define GRADACC_WORKER_PYTHON_MPI_ENV_H_

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "worker/python/session.h"

namespace gradacc::python {

// MPI_Init_thread unless MPI is initialised already (by this module or by
// another library in the process, e.g. mpi4py). Fails after Finalize.
absl::Status MpiInitialize();
bool MpiInitialized();
// MPI_Finalize, when this module initialised MPI; no-op otherwise.
void MpiFinalize();
int MpiRank();
int MpiSize();
absl::Status MpiBarrier();
// Broadcasts `bytes` bytes at `data` from `root` over MPI_COMM_WORLD.
absl::Status MpiBroadcast(void* data, size_t bytes, int root);
// Element-wise sum of doubles over MPI_COMM_WORLD, in place.
absl::Status MpiAllreduceSum(double* data, size_t count);

// Sessions with a GroupClient, so that MpiFinalize can abandon them.
void RegisterGroupSession(const std::shared_ptr<Session>& session);

}  // namespace gradacc::python

#endif  // GRADACC_WORKER_PYTHON_MPI_ENV_H_
