// The MPI peers of gradacc's window, as DDP and Horovod would use MPI: each
// of `mpirun -np M` ranks holds P f32 gradients (buffers allocated once),
// reduces them with MPI_Allreduce (in place, MPI_SUM) or MPI_Reduce to rank
// 0 + MPI_Bcast, scales by 1/M and applies the SAME optimizer step on every
// rank: gradacc's own Optimizer made from the job file's (normalised)
// optimizer, so the step costs what the server's costs. Timed per window:
// MPI_Barrier, t0, collective + scale + step, MPI_Barrier, t1; a window's
// time is the largest over the ranks; rank 0 prints medians as RESULT lines
// (tests/bench/bench_util.h), the collective alone too.
#include <mpi.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "common/buffer.h"
#include "common/job_spec.h"
#include "server/lr_schedule.h"
#include "server/optimizer.h"
#include "tests/bench/bench_util.h"

ABSL_FLAG(std::string, job, "", "job spec file: the model's size and the optimizer");
ABSL_FLAG(std::string, op, "allreduce", "allreduce or reduce_bcast");
ABSL_FLAG(int, reps, 7, "timed windows");
ABSL_FLAG(int, warmup, 2, "untimed windows first");
ABSL_FLAG(std::string, phase_file, "", "rank 0 appends the timed windows' start and end times here");
ABSL_FLAG(std::string, setting, "", "label of the run's environment in the RESULT lines");

namespace {

[[noreturn]] void Abort(int rank, const std::string& what) {
  absl::FPrintF(stderr, "gradacc_bench_mpi[%d]: %s\n", rank, what);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  absl::ParseCommandLine(argc, argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);

  auto spec = gradacc::LoadJobSpecFile(absl::GetFlag(FLAGS_job));
  if (!spec.ok()) Abort(rank, spec.status().ToString());
  if (absl::Status s = gradacc::NormalizeJobSpec(*spec); !s.ok()) Abort(rank, s.ToString());
  auto layout = gradacc::ModelLayout::FromSpec(spec->model());
  if (!layout.ok()) Abort(rank, layout.status().ToString());
  const uint64_t p = layout->num_elements();
  if (p > static_cast<uint64_t>(INT32_MAX)) Abort(rank, "P does not fit an MPI count");
  auto optimizer = gradacc::Optimizer::Create(spec->optimizer(), p);
  if (!optimizer.ok()) Abort(rank, optimizer.status().ToString());
  const std::string op = absl::GetFlag(FLAGS_op);
  if (op != "allreduce" && op != "reduce_bcast") Abort(rank, "--op must be allreduce or reduce_bcast");

  gradacc::FloatBuffer params(p), grad(p);
  const float inv = 1.0f / static_cast<float>(size);
  const int count = static_cast<int>(p);
  const int warmup = absl::GetFlag(FLAGS_warmup), total = warmup + absl::GetFlag(FLAGS_reps);
  std::vector<double> windows, collectives;
  for (int i = 0; i < total; ++i) {
    gradacc::bench::FillGradient(grad.data(), p, rank, static_cast<uint64_t>(i));
    const double lr = gradacc::LearningRateAt(spec->optimizer(), spec->schedule(), static_cast<uint64_t>(i));
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0 && i == warmup) gradacc::bench::MarkPhase(absl::GetFlag(FLAGS_phase_file), "start");
    const double t0 = gradacc::bench::NowSeconds();
    if (op == "allreduce") {
      MPI_Allreduce(MPI_IN_PLACE, grad.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    } else {
      MPI_Reduce(rank == 0 ? MPI_IN_PLACE : grad.data(), grad.data(), count, MPI_FLOAT, MPI_SUM, 0, MPI_COMM_WORLD);
      MPI_Bcast(grad.data(), count, MPI_FLOAT, 0, MPI_COMM_WORLD);
    }
    const double t_coll = gradacc::bench::NowSeconds();
    float* g = grad.data();
    for (uint64_t j = 0; j < p; ++j) g[j] *= inv;
    (*optimizer)->Step(params.span(), grad.span(), lr);
    MPI_Barrier(MPI_COMM_WORLD);
    const double t1 = gradacc::bench::NowSeconds();
    double mine[2] = {t1 - t0, t_coll - t0}, slowest[2] = {0, 0};
    MPI_Reduce(mine, slowest, 2, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (i >= warmup) {
      windows.push_back(slowest[0]);
      collectives.push_back(slowest[1]);
    }
  }
  if (rank == 0) gradacc::bench::MarkPhase(absl::GetFlag(FLAGS_phase_file), "end");
  if (rank == 0) {
    const std::string name = "mpi_" + op;
    const std::string setting = absl::GetFlag(FLAGS_setting);
    gradacc::bench::PrintTimes("window", name, p, size, setting, "window", windows);
    gradacc::bench::PrintResult("window", name, p, size, setting, "collective_median",
                                gradacc::bench::Median(collectives) * 1e3, "ms");
  }
  MPI_Finalize();
  return 0;
}
