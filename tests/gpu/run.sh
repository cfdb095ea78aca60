#!/usr/bin/env bash
# The GPU checks, start to end in one run (budget: ~8 minutes on one H100):
#   1. what the machine is (card, driver, PyTorch, CUDA, Python);
#   2. builds gradacc-server, gradacc-worker (CUDA backend), the CLI and the
#      Python package for the Python that has the CUDA PyTorch;
#   3. gradacc-worker --device=cuda: the main job (Fashion-MNIST MLP, one
#      local server, 4 ranks sharing the GPU, 3 epochs): test accuracy, target >= 85%;
#   4. tests/python_gradacc/test_gpu.py: CUDA CNN and transformer vs one
#      process (fp32), bf16 autocast, fp16 + GradScaler, the copy time not
#      hidden behind backward, samples/s against one process.
# Without an NVIDIA GPU it prints "gpu: SKIPPED ..." and exits 0 (the CPU side
# of these checks is in tests/run.sh's default tier).
#
#   tests/gpu/run.sh                 a Debian 12 host with a GPU: deploy/install-deps.sh, then the above
#   tests/gpu/run.sh --debs DIR      a machine without gRPC, Protobuf, Abseil, Open MPI or pybind11 (the
#                                    lent GPU machine): DIR holds the Debian 12 .debs tests/gpu/pack.sh
#                                    downloads; they are unpacked into a private prefix the build uses
#   tests/gpu/run.sh --debs DIR --rehearse   unpack and configure against that prefix only (no GPU needed)
# Environment: GRADACC_GPU_PYTHON (default: /opt/torch/.venv/bin/python3 when it exists, else python3),
# GRADACC_GPU_EPOCHS (3), GRADACC_BUILD_DIR (build-gpu).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

debs="" rehearse=0
while (($#)); do
  case "$1" in
    --debs) debs="$(cd "$2" && pwd)"; shift 2 ;;
    --rehearse) rehearse=1; shift ;;
    *) echo "usage: tests/gpu/run.sh [--debs DIR [--rehearse]]" >&2; exit 2 ;;
  esac
done

if ((rehearse == 0)) && ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
  echo "gpu: SKIPPED — no NVIDIA GPU on this machine (nvidia-smi finds none); the GPU checks did not run." \
    "Their CPU side (staging, overlapped copies, autocast, loss scaling) is in tests/run.sh's default tier."
  exit 0
fi

python="${GRADACC_GPU_PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x /opt/torch/.venv/bin/python3 ]]; then python=/opt/torch/.venv/bin/python3; else python=python3; fi
fi
build="${GRADACC_BUILD_DIR:-build-gpu}"
echo "=== the machine"
if ((rehearse == 0)); then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; fi
"$python" - <<'PY'
import platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
PY
ldd --version | head -1

cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADACC_BUILD_TESTS=OFF -DGRADACC_PYTHON=ON -DGRADACC_WERROR=OFF
            -DPython_EXECUTABLE="$(command -v "$python")")
if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then cmake_args+=(-DGRADACC_CUDA=ON); fi
if [[ -n "$debs" ]]; then
  # The Debian 12 packages, unpacked (no dpkg needed: tests/gpu/undeb.py).
  prefix="$root/$build-prefix"
  rm -rf "$prefix" && mkdir -p "$prefix"
  for deb in "$debs"/*.deb; do "$python" tests/gpu/undeb.py "$deb" "$prefix"; done
  lib="$prefix/usr/lib/x86_64-linux-gnu"
  export PATH="$prefix/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$lib:$lib/openmpi/lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OPAL_PREFIX="$prefix/usr"  # Open MPI (its compiler wrapper too) finds its files below it
  # Debian's CMake configs name /usr paths: point the searches at the prefix.
  cmake_args+=(-DCMAKE_PREFIX_PATH="$prefix/usr;$lib/cmake" -DCMAKE_FIND_ROOT_PATH="$prefix"
               -DProtobuf_PROTOC_EXECUTABLE="$prefix/usr/bin/protoc"
               -DMPI_CXX_COMPILER="$prefix/usr/bin/mpicxx.openmpi"
               -DGRADACC_OPENBLAS="$lib/openblas-pthread/libopenblas.so")  # (dpkg's alternatives link is not unpacked)
  echo "gpu: $(ls "$debs"/*.deb | wc -l) packages unpacked into $prefix"
else
  deploy/install-deps.sh
fi
echo "=== build ($build)"
cmake -S . -B "$build" "${cmake_args[@]}"
if ((rehearse)); then
  echo "gpu: rehearsal: configured against the unpacked packages; not building or running (no GPU needed)"
  exit 0
fi
cmake --build "$build" --target gradacc-server gradacc-worker gradacc gradacc_python -j "$(nproc)"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export GRADACC_SERVER_BIN="$root/$build/server/gradacc-server" GRADACC_CLI_BIN="$root/$build/worker/gradacc"
export PYTHONPATH="$root/$build/python${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
export GRADACC_BUILD_DIR="$root/$build" GRADACC_PYTHON_DIR="$root/$build/python"
status=0
echo "=== gradacc-worker --device=cuda: the main job"
run="$root/$build/run-main" && rm -rf "$run" && mkdir -p "$run"
"$build/server/gradacc-server" --listen=127.0.0.1:0 --port_file="$run/server.port" \
  --workers=4 --epochs="${GRADACC_GPU_EPOCHS:-3}" --output="$run/final.safetensors" >"$run/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 200); do [[ -s "$run/server.port" ]] && break; sleep 0.05; done
addr="127.0.0.1:$(cat "$run/server.port")"
start=$SECONDS
# Ranks started with the worker's own --rank/--world_size (no mpirun needed).
pids=()
for r in 0 1 2 3; do
  timeout 300 "$build/worker/gradacc-worker" --server="$addr" --rank=$r --world_size=4 --device=cuda \
    --epochs="${GRADACC_GPU_EPOCHS:-3}" >"$run/worker$r.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
seconds=$((SECONDS - start))
accuracy=$(sed -n 's/^final test accuracy: \([0-9.]*\)%.*/\1/p' "$run"/worker*.log | tail -1)
echo "gpu: main job on cuda: test accuracy ${accuracy:-unknown}% in ${seconds} s (target >= 85%)"
if [[ -z "$accuracy" ]] || ! awk -v a="$accuracy" 'BEGIN { exit !(a >= 85) }'; then
  status=1; tail -20 "$run"/worker0.log "$run/server.log"
fi
kill "$server" 2>/dev/null || true
echo "=== gradacc.torch on the GPU"
(cd tests/python_gradacc && timeout 300 "$python" -m unittest -v test_gpu) || status=1
echo "gpu: $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit "$status"
