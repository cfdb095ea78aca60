// Kernel benchmarks (Google Benchmark): the memory roofline (memcpy, a plain
// a += b) next to gradacc's accumulate and optimizer kernels, on buffers
// allocated once (huge pages where the kernel allows). Not a test: run
//   build/tests/bench/gradacc_bench_kernels --benchmark_min_time=0.5
// and compare bytes_per_second within one run (tests/bench/run.sh does).
#include <algorithm>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "common/buffer.h"
#include "common/kernels.h"
#include "gradacc/v1/job.pb.h"
#include "server/optimizer.h"

namespace gradacc {
namespace {

FloatBuffer Filled(size_t n, float v) {
  FloatBuffer b(n);
  for (size_t i = 0; i < n; ++i) b[i] = v + static_cast<float>(i % 7) * 1e-3f;
  return b;
}

void BM_Memcpy(benchmark::State& state) {
  const size_t n = state.range(0);
  FloatBuffer a = Filled(n, 1), b = Filled(n, 2);
  for (auto _ : state) {
    std::memcpy(a.data(), b.data(), n * sizeof(float));
    benchmark::DoNotOptimize(a.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float) * 2);  // read + write
}

// The roofline for accumulation: the simplest a[i] += b[i] loop.
void BM_AddPlain(benchmark::State& state) {
  const size_t n = state.range(0);
  FloatBuffer a = Filled(n, 1), b = Filled(n, 2);
  for (auto _ : state) {
    float* __restrict x = a.data();
    const float* __restrict y = b.data();
    for (size_t i = 0; i < n; ++i) x[i] += y[i];
    benchmark::DoNotOptimize(a.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float) * 3);  // 2 reads + 1 write
}

// The same loop on every hardware thread (one contiguous part each, threads
// started per iteration like gradacc's ParallelFor): the roofline for a
// multi-threaded accumulate.
void BM_AddPlainThreads(benchmark::State& state) {
  const size_t n = state.range(0);
  FloatBuffer a = Filled(n, 1), b = Filled(n, 2);
  const size_t parts = std::max(1u, std::thread::hardware_concurrency());
  auto add = [&](size_t begin, size_t end) {
    float* __restrict x = a.data();
    const float* __restrict y = b.data();
    for (size_t i = begin; i < end; ++i) x[i] += y[i];
  };
  for (auto _ : state) {
    std::vector<std::thread> threads;
    auto bound = [&](size_t t) { return t == parts ? n : n * t / parts / 16 * 16; };
    for (size_t t = 0; t + 1 < parts; ++t) threads.emplace_back(add, bound(t), bound(t + 1));
    add(bound(parts - 1), n);
    for (std::thread& t : threads) t.join();
    benchmark::DoNotOptimize(a.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float) * 3);
}

void BM_AddInto(benchmark::State& state) {
  const size_t n = state.range(0);
  FloatBuffer a = Filled(n, 1), b = Filled(n, 2);
  for (auto _ : state) {
    AddInto(a.span(), b.span());
    benchmark::DoNotOptimize(a.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float) * 3);
}

// The server's reduction (SumInOrder) of two contributions into the
// window's gradient: the same traffic as a += b (two reads, one write).
void BM_SumInOrder(benchmark::State& state) {
  const size_t n = state.range(0);
  FloatBuffer a = Filled(n, 1), b = Filled(n, 2), out(n);
  const float* sources[] = {a.data(), b.data()};
  for (auto _ : state) {
    SumInOrder(out.span(), sources, 0.0f);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float) * 3);
}

void BM_FirstNonFinite(benchmark::State& state) {
  const size_t n = state.range(0);
  FloatBuffer a = Filled(n, 1);
  for (auto _ : state) benchmark::DoNotOptimize(FirstNonFinite(a.span()));
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float));
}

void OptimizerStep(benchmark::State& state, v1::OptimizerSpec::Kind kind) {
  const size_t n = state.range(0);
  v1::OptimizerSpec spec;
  spec.set_kind(kind);
  spec.set_lr(1e-3);
  spec.mutable_sgd()->set_momentum(0.9);
  spec.mutable_adam()->set_beta1(0.9);
  spec.mutable_adam()->set_beta2(0.999);
  spec.mutable_adam()->set_eps(1e-8);
  auto opt = Optimizer::Create(spec, n).value();
  FloatBuffer p = Filled(n, 1), g = Filled(n, 0.01f);
  for (auto _ : state) {
    opt->Step(p.span(), g.span(), 1e-3);
    benchmark::DoNotOptimize(p.data());
  }
  // SGD+momentum touches p, g, buf (3 reads, 2 writes); Adam p, g, m, v (4 reads, 3 writes).
  const int touches = kind == v1::OptimizerSpec::KIND_SGD ? 5 : 7;
  state.SetBytesProcessed(int64_t(state.iterations()) * n * sizeof(float) * touches);
}

void BM_SgdMomentumStep(benchmark::State& state) { OptimizerStep(state, v1::OptimizerSpec::KIND_SGD); }
void BM_AdamStep(benchmark::State& state) { OptimizerStep(state, v1::OptimizerSpec::KIND_ADAM); }

// Real time, not CPU time: gradacc's kernels may use several threads, and
// the benchmark thread's CPU time does not count its helpers' work.
constexpr int64_t k1M = 1 << 20, k16M = 16 << 20;
BENCHMARK(BM_Memcpy)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AddPlain)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AddPlainThreads)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AddInto)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SumInOrder)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_FirstNonFinite)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SgdMomentumStep)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AdamStep)->Arg(k1M)->Arg(k16M)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace gradacc

BENCHMARK_MAIN();
