#!/usr/bin/env bash
# How gradacc scales (issue 24), in one run, root not needed:
#   A. server peak RSS and window time against the number of gRPC workers
#      M = 2, 4, 8, 16, 32 at P = 16M (the bench's C++ clients, little
#      compute), with Open MPI MPI_Allreduce + Adam at the same M; each M
#      three times: the running sum (the defaults: a server on loopback
#      does not probe the bandwidth-delay product, and a paused stream holds
#      at most its 1 MiB window), the running sum with --grpc_bdp_probe=true
#      (what a server listening beyond loopback does), and "buffers"
#      (--running_sum=false: a model-sized buffer per push, summed at close,
#      as before the running sum);
#   B. window time for P = 64K and 1M against M = 1, 2, 4, 8, on shared
#      memory (with its fast path, the default, and without it:
#      --shm_fast_path=false) and gRPC, against Open MPI MPI_Allreduce + Adam;
#   C. the largest job this machine holds: P = 256M (else 128M, 64M) over
#      4 shards served by one process, M = 4 gRPC workers: bytes per
#      parameter on the server and on a worker.
# Writes bench-results/<time>-<host>-scale.{csv,md,png}: a table of medians,
# the chart, and kind=ratio rows named "scale: ..." (tests/bench/scale_report.py).
#
#   tests/bench/run.sh --scale [--no-build] [--reps=5] [--warmup=1] [--out=bench-results]
#                              [--workers=2,4,8,16,32] [--small-workers=1,2,4,8] [--largest=256M,128M,64M]
#                              [--server-flags="--staging_mb=64 ..."]
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
root="$(cd "$(dirname "$self")/../.." && pwd)"
cd "$root"

build="build-bench" do_build=1 reps=5 warmup=1 out="bench-results"
workers="2,4,8,16,32" small_workers="1,2,4,8" largest="256M,128M,64M" server_flags=""
for arg in "$@"; do
  case "$arg" in
    --no-build) do_build=0 ;;
    --build-dir=*) build="${arg#*=}" ;;
    --reps=*) reps="${arg#*=}" ;;
    --warmup=*) warmup="${arg#*=}" ;;
    --out=*) out="${arg#*=}" ;;
    --workers=*) workers="${arg#*=}" ;;
    --small-workers=*) small_workers="${arg#*=}" ;;
    --largest=*) largest="${arg#*=}" ;;
    --server-flags=*) server_flags="${arg#*=}" ;;
    -h|--help) sed -n '2,17p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scale.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
log() { echo "scale: $*" >&2; }
# elements, label, write_job, mem_available_mb, fits
source "$(dirname "$self")/bench_lib.sh"

if ((do_build)); then
  log "building $build (Release, benchmarks only)"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADACC_BUILD_TESTS=OFF \
    -DGRADACC_BUILD_BENCH=ON -DGRADACC_CUDA=OFF >/dev/null
  cmake --build "$build" --target gradacc_bench -j 2
fi
bin_server="$build/server/gradacc-server" bin_bench="$build/tests/bench"
for b in "$bin_server" "$bin_bench/gradacc_bench_window" "$bin_bench/gradacc_bench_mpi"; do
  [[ -x "$b" ]] || { echo "scale.sh: $b is missing (build first, or drop --no-build)" >&2; exit 1; }
done
mkdir -p "$out"
stamp="$(date +%Y%m%d-%H%M%S)" host="$(hostname -s 2>/dev/null || echo host)"
base="$out/$stamp-$host-scale"
work="$(mktemp -d)" logs="$base-logs"
mkdir -p "$logs"
raw="$work/raw.csv"
: >"$raw"
server_pid=""
cleanup() { [[ -z "$server_pid" ]] || kill "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1
windows=$((warmup + reps))

collect() { grep '^RESULT ' | sed 's/^RESULT //' >>"$raw" || true; }
start_server() {  # NAME FLAGS...: sets server_pid, server_addr
  local name="$1"; shift
  rm -f "$work/$name.port"
  "$bin_server" --port_file="$work/$name.port" "$@" >"$logs/$name.server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do [[ -s "$work/$name.port" ]] && break; kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  [[ -s "$work/$name.port" ]] || { cat "$logs/$name.server.log" >&2; server_pid=""; return 1; }
  server_addr="127.0.0.1:$(cat "$work/$name.port")"
}
stop_server() {  # records the server's peak RSS as SECTION,gradacc_server,P,M,SETTING,peak_rss
  local rss
  rss=$(awk '$1 == "VmHWM:" { print int($2 / 1024) }' "/proc/$server_pid/status" 2>/dev/null || true)
  [[ -z "$rss" ]] || echo "$1,gradacc_server,$2,$3,$4,peak_rss,$rss,MB" >>"$raw"
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
gradacc_window() {  # SECTION P M SHM(on|off) [server flags...]
  local section="$1" p="$2" m="$3" shm="$4"; shift 4
  local setting tag limit
  setting=$([[ $shm == on ]] && echo shm || echo grpc)
  setting="${setting_override:-$setting}"
  tag="$section-$(label "$p")-M$m-$setting"
  limit=$(( 120 + windows * ((p >> 20) + 1) * m / 5 ))
  write_job "$work/$tag.job" "$p" "$m" "$windows"
  log "$section: gradacc P=$(label "$p") M=$m $setting"
  # shellcheck disable=SC2086  # --server-flags: words
  start_server "$tag" --listen=127.0.0.1:0 --job="$work/$tag.job" $server_flags "$@" || { log "the server did not start ($tag)"; return 0; }
  local addr="$server_addr"
  if [[ -n "${shard_list:-}" ]]; then addr="$shard_list"; fi
  timeout "$limit" mpirun -np "$m" --bind-to none "$bin_bench/gradacc_bench_window" --server="$addr" \
    --shm="$shm" --warmup="$warmup" --setting="$setting" 2>"$logs/$tag.err" |
    sed "s/^RESULT window,/RESULT $section,/" | collect || log "$tag failed (see $logs/$tag.err)"
  stop_server "$section" "$p" "$m" "$setting"
}
mpi_window() {  # SECTION P M
  local section="$1" p="$2" m="$3"
  write_job "$work/mpi.job" "$p" "$m" "$windows"
  log "$section: MPI_Allreduce + Adam P=$(label "$p") M=$m"
  timeout $(( 120 + windows * ((p >> 20) + 1) * m / 5 )) mpirun -np "$m" --bind-to none \
    -x GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$bin_bench/gradacc_bench_mpi" --job="$work/mpi.job" --op=allreduce \
    --reps="$reps" --warmup="$warmup" --setting=hugetlb 2>"$logs/$section-mpi-$p-$m.err" |
    sed "s/^RESULT window,/RESULT $section,/" | collect || log "MPI $section P=$p M=$m failed"
}

# A. memory and time against M at 16M (gRPC).
p16=$((16 << 20))
IFS=, read -r -a list <<<"$workers"
for m in "${list[@]}"; do
  need=$(( 64 * (8 + 2 * m) + m * 350 ))
  if ! fits "$need"; then echo "A,note,$p16,$m,grpc,skipped,$need,MB" >>"$raw"; log "A: M=$m needs ~$need MB"; continue; fi
  gradacc_window A "$p16" "$m" off
  setting_override=grpc-bdp gradacc_window A "$p16" "$m" off --grpc_bdp_probe=true
  setting_override=grpc-buffers gradacc_window A "$p16" "$m" off --running_sum=false
  mpi_window A "$p16" "$m"
done
# B. small windows against M, shared memory and gRPC.
IFS=, read -r -a list <<<"$small_workers"
for p in $((64 << 10)) $((1 << 20)); do
  for m in "${list[@]}"; do
    gradacc_window B "$p" "$m" on
    setting_override=shm-rpc gradacc_window B "$p" "$m" on --shm_fast_path=false
    gradacc_window B "$p" "$m" off
    mpi_window B "$p" "$m"
  done
done
# C. the largest job: 4 shards in one server process, 4 gRPC workers.
IFS=, read -r -a list <<<"$largest"
for s in "${list[@]}"; do
  p=$(elements "$s")
  pmb=$(( (p * 4) >> 20 ))
  need=$(( pmb * 12 + 4 * (3 * pmb + 200) ))
  if ! fits "$need"; then log "C: P=$s needs ~$need MB; trying a smaller one"; continue; fi
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  shard_list="127.0.0.1:$port,127.0.0.1:$port,127.0.0.1:$port,127.0.0.1:$port"
  gradacc_window C "$p" 4 off --listen="127.0.0.1:$port" --shard=0,1,2,3 --num_shards=4 --shard_peers="$shard_list"
  shard_list=""
  break
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] || commit="$commit+dirty"
cp "$raw" "$logs/raw.csv"
/usr/bin/python3 "$(dirname "$self")/scale_report.py" --raw="$raw" --csv="$base.csv" --md="$base.md" \
  --png="$base.png" --commit="$commit" --machine="$(nproc) CPUs, $(mem_available_mb) MB available"
wrote=()
for f in "$base.csv" "$base.md" "$base.png"; do [[ -s "$f" ]] && wrote+=("$f"); done
log "wrote ${wrote[*]} (logs: $logs)"
[[ -s "$base.png" ]] || log "no chart: python3-matplotlib is not importable (deploy/install-deps.sh installs it)"
