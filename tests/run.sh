#!/usr/bin/env bash
# Installs what is missing, builds, and runs gradacc's test suite.
#   tests/run.sh                 every tier that needs no container
#   tests/run.sh -L unit         one tier (ctest label: unit, integration, mpi, ...)
#   tests/run.sh -L soak         the soak test (10 minutes of faults; not in
#                                the default run; tests/soak/soak.py --help)
#   tests/run.sh -R Golden       any other ctest arguments
#   tests/run.sh --tsan          ThreadSanitizer build (build-tsan) of the unit,
#                                integration and shard tiers, and runs them
#   tests/run.sh --thread-safety clang build (build-clang) of the libraries
#                                with locks, -Wthread-safety -Werror
#   tests/run.sh --torch2        the PyTorch 2 tier: Debian 13 (torch 2.6) in
#                                a debootstrap root filesystem, the Python
#                                package's tests there (tests/torch2/run.sh;
#                                needs root, else it says SKIPPED)
# The elastic tier's full-size run (the quickstart's job resumed from 4 to 2
# to 3 ranks, >= 85%, ~2 min): GRADACC_ELASTIC_FULL=1 tests/run.sh -R ElasticFull.
# The fuzz corpus is replayed in the fault tier; to fuzz for new inputs:
# tests/fuzz/run_fuzz.sh [seconds].
# Environment: GRADACC_BUILD_DIR (default build, build-tsan, build-clang),
# GRADACC_SANITIZE ('address,undefined' or 'thread', default run only),
# GRADACC_SKIP_INSTALL=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode=default
case "${1:-}" in
  --torch2) shift; exec "$root/tests/torch2/run.sh" "$@" ;;
  --tsan) mode=tsan; shift ;;
  --thread-safety) mode=thread-safety; shift ;;
esac

if [[ "${GRADACC_SKIP_INSTALL:-0}" != 1 ]]; then
  deploy/install-deps.sh
fi

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  # Paths relative to the work tree, and the build folder left out of the
  # hash (it only names folders in the debug info): a fresh clone elsewhere
  # (CI) reuses what an earlier build compiled.
  export CCACHE_BASEDIR="$root" CCACHE_NOHASHDIR=1
fi

# Two jobs: each TU that includes gRPC headers takes ~1 GB and the machines
# have 2 cores.
case "$mode" in
  thread-safety)
    # Only compiles (nothing runs): no optimisation, no debug info.
    build="${GRADACC_BUILD_DIR:-build-clang}"
    CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0 \
      -DGRADACC_THREAD_SAFETY=ON -DGRADACC_WERROR=ON -DGRADACC_CUDA=OFF "${launcher[@]}" >/dev/null
    cmake --build "$build" --target gradacc_thread_safety -j 2
    echo "thread-safety: clang -Wthread-safety -Werror build of common, server, client, dashboard and mutex_test passed"
    exit 0
    ;;
  tsan)
    build="${GRADACC_BUILD_DIR:-build-tsan}"
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGRADACC_SANITIZE=thread \
      -DGRADACC_CUDA=OFF "${launcher[@]}" >/dev/null
    cmake --build "$build" --target gradacc_tier_unit gradacc_tier_integration gradacc_tier_shard -j 2
    ;;
  default)
    build="${GRADACC_BUILD_DIR:-build}"
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DGRADACC_SANITIZE="${GRADACC_SANITIZE:-}" "${launcher[@]}" >/dev/null
    cmake --build "$build" -j 2
    ;;
esac

# Open MPI refuses root and more ranks than cores unless told; the tests
# launch their own mpirun with these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

cd "$build"
args=("$@")

if [[ "$mode" == tsan ]]; then
  # Every process (test binaries and the servers and clients they start)
  # writes its reports to tsan-reports/ instead of a stderr that a test may
  # have redirected; any report fails the run. Suppressions: tests/tsan.supp.
  reports="$PWD/tsan-reports"
  rm -rf "$reports"
  mkdir -p "$reports"
  export TSAN_OPTIONS="suppressions=$root/tests/tsan.supp log_path=$reports/tsan second_deadlock_stack=1 \
history_size=4 halt_on_error=0"
  status=0
  # The shard tier too: its workers' clients run a thread per shard.
  ctest --output-on-failure --timeout 900 -j 2 -L 'unit|integration|shard' "${args[@]}" || status=$?
  if compgen -G "$reports/tsan.*" >/dev/null; then
    # The first report of each process in full, then a count of them all.
    for f in "$reports"/tsan.*; do
      echo "=== $f (first report)"
      sed -n '1,/^SUMMARY/p' "$f"
    done
    echo "=== every report, by its summary line"
    cat "$reports"/tsan.* | grep '^SUMMARY' | sort | uniq -c | sort -rn
    echo "tsan: $(cat "$reports"/tsan.* | grep -c '^WARNING: ThreadSanitizer') report(s) in" \
      "$(ls "$reports" | wc -l) process(es), see $reports" >&2
    exit 1
  fi
  if ((status != 0)); then exit "$status"; fi
  echo "tsan: unit, integration and shard tiers passed without a ThreadSanitizer report"
  exit 0
fi

# The container tier, the soak test and the full-size elastic run are their
# own commands (podman and minutes; ten minutes of faults; minutes of
# training): tests/run.sh -L container, -L soak, -L elastic_full.
has_label=0
for a in "${args[@]}"; do [[ "$a" == -L* ]] && has_label=1; done
if ((has_label == 0)); then args+=(-LE 'container|soak|elastic_full'); fi
exec ctest --output-on-failure --timeout 900 -j 2 "${args[@]}"
