#!/usr/bin/env bash
# The main job, one command. On a fresh Debian 12 machine it installs what is
# missing, builds gradacc (Release), starts a local gradacc-server on a free
# port, trains the built-in Fashion-MNIST MLP with `mpirun -np 4
# gradacc-worker` for 3 epochs, prints the progress, the final test accuracy
# and the server's status table, stops the server and leaves the run's files
# (job spec, final parameters as safetensors, logs) in a run folder.
#
# Environment: GRADACC_BUILD_DIR (default build-release), GRADACC_RUN_DIR
# (default runs/<time>), GRADACC_WORKERS (4), GRADACC_EPOCHS (3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

deploy/install-deps.sh
build="${GRADACC_BUILD_DIR:-build-release}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADACC_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j 2

workers="${GRADACC_WORKERS:-4}"
epochs="${GRADACC_EPOCHS:-3}"
run="${GRADACC_RUN_DIR:-$root/runs/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$run"
rm -f "$run/server.port"

"$build/server/gradacc-server" --listen=127.0.0.1:0 --port_file="$run/server.port" \
  --workers="$workers" --epochs="$epochs" \
  --dump_job="$run/job.textproto" --output="$run/final.safetensors" >"$run/server.log" 2>&1 &
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

# Root- and 2-core-friendly Open MPI; one BLAS thread per rank.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mpirun -np "$workers" --bind-to none -x OPENBLAS_NUM_THREADS=1 \
  "$build/worker/gradacc-worker" --server="$addr" --epochs="$epochs" 2>&1 | tee "$run/worker.log"
echo
"$build/worker/gradacc" status --server="$addr" | tee "$run/status.txt"

trap - EXIT
stop_server
accuracy=$(sed -n 's/^final test accuracy: \([0-9.]*\)%.*/\1/p' "$run/worker.log" | tail -1)
echo
echo "run folder: $run (job.textproto, final.safetensors, server.log, worker.log, status.txt)"
if [[ -n "$accuracy" ]] && awk -v a="$accuracy" 'BEGIN { exit !(a >= 85) }'; then
  echo "quickstart: test accuracy $accuracy% after $epochs epochs with $workers MPI workers (target >= 85%: reached)"
else
  echo "quickstart: test accuracy ${accuracy:-unknown}% after $epochs epochs with $workers MPI workers (target >= 85%: NOT reached)"
  exit 1
fi
