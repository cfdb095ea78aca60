#!/usr/bin/env bash
# Installs what is missing, builds, and runs gradacc's test suite.
#   tests/run.sh                 every tier that needs no container
#   tests/run.sh -L unit         one tier (ctest label: unit, integration, mpi, ...)
#   tests/run.sh -R Golden       any other ctest arguments
# Environment: GRADACC_BUILD_DIR (default build), GRADACC_SANITIZE
# ('address,undefined' or 'thread'), GRADACC_SKIP_INSTALL=1.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ "${GRADACC_SKIP_INSTALL:-0}" != 1 ]]; then
  deploy/install-deps.sh
fi

build="${GRADACC_BUILD_DIR:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGRADACC_SANITIZE="${GRADACC_SANITIZE:-}" >/dev/null
# Two jobs: each TU that includes gRPC headers takes ~1 GB and the machines
# have 2 cores.
cmake --build "$build" -j 2

# Open MPI refuses root and more ranks than cores unless told; the tests
# launch their own mpirun with these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

cd "$build"
args=("$@")
# The container tier is its own command (it needs podman and minutes).
has_label=0
for a in "${args[@]}"; do [[ "$a" == -L* ]] && has_label=1; done
if ((has_label == 0)); then args+=(-LE container); fi
exec ctest --output-on-failure --timeout 900 -j 2 "${args[@]}"
