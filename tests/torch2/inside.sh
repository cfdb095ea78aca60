#!/usr/bin/env bash
# The PyTorch 2 tier's half inside the Debian 13 root filesystem (started by
# tests/torch2/run.sh, which bind-mounts the work tree at /src): builds what
# the Python tests start (the package, gradacc-server, the CLI, the test
# client) in /src/build-torch2 and runs the tests with ctest.
set -euo pipefail
cd /src
build=/src/build-torch2
export CCACHE_DIR=/ccache CCACHE_MAXSIZE=2G
# gcc 14 and the newer libraries warn where gcc 12 does not; the tier checks
# behaviour, so warnings stay warnings here (Debian 12's build keeps -Werror).
cmake -S /src -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGRADACC_CUDA=OFF -DGRADACC_PYTHON=ON \
  -DGRADACC_WERROR=OFF -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build "$build" --target gradacc_python gradacc-server gradacc gradacc_test_client -j 2
# Open MPI 5 (PRRTE) as root and with more ranks than cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe
# Debian 13's torch 2.6 computes wrong convolution gradients through
# oneDNN's AVX-512 kernels on some CPUs (tests/torch2/onednn_probe.py says
# which): the tests then run on its AVX2 kernels, which are right, so that
# they test gradacc rather than that defect.
if ! python3 /src/tests/torch2/onednn_probe.py; then
  export ONEDNN_MAX_CPU_ISA=AVX2
  python3 /src/tests/torch2/onednn_probe.py | sed 's/^/with ONEDNN_MAX_CPU_ISA=AVX2: /' \
    || { echo "torch2: this torch computes wrong convolution gradients even on oneDNN's AVX2 kernels" >&2; exit 1; }
  echo "torch2: Debian 13's torch computes wrong convolution gradients through oneDNN's AVX-512 kernels on this" \
    "CPU: the tests run with ONEDNN_MAX_CPU_ISA=AVX2"
fi
args=("$@")
if ((${#args[@]} == 0)); then args=(-L 'python|torch2'); fi
cd "$build"
ctest --output-on-failure --timeout 900 "${args[@]}"
