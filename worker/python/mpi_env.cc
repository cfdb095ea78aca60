#include "worker/python/mpi_env.h"

#include <dlfcn.h>
#include <mpi.h>

#include <climits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/mutex.h"

namespace gradacc::python {
namespace {

struct MpiState {
  gradacc::Mutex mu;
  bool we_initialized ABSL_GUARDED_BY(mu) = false;
  std::vector<std::weak_ptr<Session>> groups ABSL_GUARDED_BY(mu);
};

MpiState& State() {
  static MpiState* state = new MpiState();  // never destroyed: used at exit
  return *state;
}

bool Finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

absl::Status NeedMpi(const char* what) {
  if (!MpiInitialized()) return absl::FailedPreconditionError(absl::StrCat(what, ": MPI is not initialised"));
  return absl::OkStatus();
}

}  // namespace

bool MpiInitialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  return initialized != 0 && !Finalized();
}

absl::Status MpiInitialize() {
  MpiState& st = State();
  gradacc::MutexLock lock(&st.mu);
  if (Finalized()) return absl::FailedPreconditionError("MPI was finalised already in this process");
  if (MpiInitialized()) return absl::OkStatus();
  // Open MPI's components (dlopen'ed plugins) resolve libmpi's symbols
  // globally; this extension was loaded RTLD_LOCAL.
  for (const char* name : {"libmpi.so.40", "libmpi.so"}) {
    if (dlopen(name, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD) != nullptr) break;
  }
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) {
    return absl::InternalError("MPI_Init_thread failed");
  }
  st.we_initialized = true;
  return absl::OkStatus();
}

void MpiFinalize() {
  MpiState& st = State();
  std::vector<std::shared_ptr<Session>> alive;
  {
    gradacc::MutexLock lock(&st.mu);
    if (!st.we_initialized || Finalized()) return;
    for (auto& weak : st.groups) {
      if (auto s = weak.lock()) alive.push_back(std::move(s));
    }
    st.groups.clear();
  }
  for (auto& s : alive) s->AbandonGroupBeforeMpiFinalize();
  MPI_Finalize();
}

int MpiRank() {
  int rank = 0;
  if (MpiInitialized()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int MpiSize() {
  int size = 1;
  if (MpiInitialized()) MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

absl::Status MpiBarrier() {
  if (absl::Status s = NeedMpi("barrier"); !s.ok()) return s;
  MPI_Barrier(MPI_COMM_WORLD);
  return absl::OkStatus();
}

absl::Status MpiBroadcast(void* data, size_t bytes, int root) {
  if (absl::Status s = NeedMpi("broadcast"); !s.ok()) return s;
  char* p = static_cast<char*>(data);
  // MPI counts are ints: large buffers go in pieces.
  while (bytes > 0) {
    const int n = bytes > static_cast<size_t>(INT_MAX) ? INT_MAX : static_cast<int>(bytes);
    MPI_Bcast(p, n, MPI_BYTE, root, MPI_COMM_WORLD);
    p += n;
    bytes -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status MpiAllreduceSum(double* data, size_t count) {
  if (absl::Status s = NeedMpi("allreduce"); !s.ok()) return s;
  if (count > static_cast<size_t>(INT_MAX)) return absl::InvalidArgumentError("allreduce: too many elements");
  MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(count), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return absl::OkStatus();
}

void RegisterGroupSession(const std::shared_ptr<Session>& session) {
  MpiState& st = State();
  gradacc::MutexLock lock(&st.mu);
  st.groups.push_back(session);
}

}  // namespace gradacc::python
