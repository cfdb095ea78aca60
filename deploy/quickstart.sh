#!/usr/bin/env bash
# The main job, one command. On a fresh Debian 12 machine it installs what is
# missing, builds gradacc (Release), starts a local gradacc-server on a free
# port, trains with `mpirun -np 4` for 3 epochs, prints the progress, the
# server's status table and, on its last line, the final test accuracy, stops
# the server and leaves the run's files (job spec, final parameters as
# safetensors, logs) in a run folder.
#
#   deploy/quickstart.sh           the built-in Fashion-MNIST MLP (gradacc-worker), target >= 85%
#   deploy/quickstart.sh --torch   a PyTorch CNN (worker/python/examples/fashion_mnist_cnn.py,
#                                  `mpirun -np 4 python3 ...` through the Python package), target >= 90%
#
# Environment: GRADACC_BUILD_DIR (default build-release), GRADACC_RUN_DIR
# (default runs/<time>), GRADACC_WORKERS (4), GRADACC_EPOCHS (3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

mode=mlp
case "${1:-}" in
  --torch) mode=torch ;;
  "") ;;
  *) echo "usage: deploy/quickstart.sh [--torch]" >&2; exit 2 ;;
esac

deploy/install-deps.sh
build="${GRADACC_BUILD_DIR:-build-release}"
python_option=()
if [[ "$mode" == torch ]]; then python_option=(-DGRADACC_PYTHON=ON); fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADACC_BUILD_TESTS=OFF "${python_option[@]}" >/dev/null
cmake --build "$build" -j 2

workers="${GRADACC_WORKERS:-4}"
epochs="${GRADACC_EPOCHS:-3}"
run="${GRADACC_RUN_DIR:-$root/runs/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$run"
rm -f "$run/server.port"

example=worker/python/examples/fashion_mnist_cnn.py
python=/usr/bin/python3
export PYTHONPATH="$root/$build/python${PYTHONPATH:+:$PYTHONPATH}"
if [[ "$mode" == torch ]]; then
  # The job from the PyTorch model, its optimizer and schedule.
  "$python" "$example" --write_job="$run/job.textproto" --workers="$workers" --epochs="$epochs"
  job_flags=(--job="$run/job.textproto")
  target=90
else
  job_flags=(--workers="$workers" --epochs="$epochs" --dump_job="$run/job.textproto")
  target=85
fi

"$build/server/gradacc-server" --listen=127.0.0.1:0 --port_file="$run/server.port" "${job_flags[@]}" \
  --output="$run/final.safetensors" >"$run/server.log" 2>&1 &
server_pid=$!
stop_server() { kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
trap stop_server EXIT
for _ in $(seq 200); do [[ -s "$run/server.port" ]] && break; sleep 0.05; done
if [[ ! -s "$run/server.port" ]]; then
  cat "$run/server.log"
  echo "quickstart: the server did not start" >&2
  exit 1
fi
addr="127.0.0.1:$(cat "$run/server.port")"
echo "quickstart: gradacc-server on $addr (log: $run/server.log)"

# Root- and 2-core-friendly Open MPI; one BLAS (and torch) thread per rank.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
start=$SECONDS
if [[ "$mode" == torch ]]; then
  mpirun -np "$workers" --bind-to none -x PYTHONPATH -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 \
    "$python" "$example" --server="$addr" --status=0 2>&1 | tee "$run/worker.log"
else
  # --enable-recovery: a rank that dies does not take the others down; its
  # replacement, started alone, rejoins (docs/operations.md, "A lost gradacc-worker rank"):
  #   $build/worker/gradacc-worker --rank=R --world_size=$workers --server=$addr --epochs=$epochs
  mpirun -np "$workers" --enable-recovery --bind-to none -x OPENBLAS_NUM_THREADS=1 \
    "$build/worker/gradacc-worker" --server="$addr" --epochs="$epochs" 2>&1 | tee "$run/worker.log"
fi
seconds=$((SECONDS - start))
echo
"$build/worker/gradacc" status --server="$addr" | tee "$run/status.txt"

trap - EXIT
stop_server
accuracy=$(sed -n 's/^final test accuracy: \([0-9.]*\)%.*/\1/p' "$run/worker.log" | tail -1)
what="$([[ "$mode" == torch ]] && echo "the PyTorch CNN" || echo "the MLP")"
echo
echo "run folder: $run (job.textproto, final.safetensors, server.log, worker.log, status.txt)"
summary="$what, $epochs epochs with $workers MPI workers in ${seconds} s"
if [[ -n "$accuracy" ]] && awk -v a="$accuracy" -v t="$target" 'BEGIN { exit !(a >= t) }'; then
  echo "quickstart: test accuracy $accuracy% after $summary (target >= $target%: reached)"
else
  echo "quickstart: test accuracy ${accuracy:-unknown}% after $summary (target >= $target%: NOT reached)"
  exit 1
fi
