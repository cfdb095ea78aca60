#!/usr/bin/env bash
# The main job, one command: installs what is missing, builds gradacc
# (Release), starts a local gradacc-server on a free port, checks it over
# gRPC with the CLI, and stops it. Training workers arrive with the
# "Real training" milestone; until then this is the server smoke run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

deploy/install-deps.sh
build="${GRADACC_BUILD_DIR:-build-release}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADACC_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j 2

run="${GRADACC_RUN_DIR:-$root/runs/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$run"
"$build/server/gradacc-server" --listen=127.0.0.1:0 --port_file="$run/server.port" \
  --dump_job="$run/job.textproto" >"$run/server.log" 2>&1 &
server_pid=$!
trap 'kill -TERM $server_pid 2>/dev/null || true; wait $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s "$run/server.port" ]] && break; sleep 0.1; done
[[ -s "$run/server.port" ]] || { cat "$run/server.log"; echo "server did not start" >&2; exit 1; }
addr="127.0.0.1:$(cat "$run/server.port")"

"$build/worker/gradacc" health --server="$addr"
"$build/worker/gradacc" status --server="$addr"
kill -TERM $server_pid
wait $server_pid
trap - EXIT
echo "quickstart: server smoke run done; files in $run"
