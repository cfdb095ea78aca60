#!/usr/bin/env bash
# gradacc's benchmark (issue 5): ONE command that builds a Release folder and
# measures, on this machine and in one run, the kernels against the memory
# roofline, raw loopback TCP, gradacc's push and pull, gradacc's end-to-end
# window against Open MPI and PyTorch gloo (each peer followed by the same
# Adam step on every rank), and training samples/s of the main job's MLP
# against PyTorch DDP with no_sync(), and the same for the PyTorch CNN of
# worker/python/examples trained by gradacc's Python workers (gradacc.torch).
# Prints a table of medians and ratios and writes it to
# bench-results/<time>-<host>.{csv,md} (git-ignored).
# Never run by ctest or CI. See tests/bench/README.md.
#
#   tests/bench/run.sh [--quick] [--sizes=1M,16M,64M] [--workers=1,2,4,8]
#                      [--reps=7] [--warmup=2] [--train-steps=400]
#                      [--train-reps=3] [--torch-steps=150] [--build-dir=build-bench]
#                      [--no-build] [--only=kernels,tcp,push,window,train,torch]
#                      [--out=bench-results]
#   --quick: P 1M,16M, M 2, 3 windows after 1 warm-up, 100 training steps
#   once, 50 CNN windows once, short kernel runs (about two minutes after
#   the build).
#   tests/bench/run.sh --scale [--no-build] [scale options]: server memory and
#   window time against the number of workers, small windows against MPI,
#   the largest job this machine holds (tests/bench/scale.sh --help).
#   tests/bench/run.sh --multihost [--no-build] [multihost options]: gradacc
#   against Open MPI and gloo across simulated hosts with shaped links
#   (root; tests/bench/multihost.sh --help lists its options).
set -euo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
root="$(cd "$(dirname "$self")/../.." && pwd)"
cd "$root"

usage() { sed -n '2,26p' "$self" | sed 's/^# \{0,1\}//'; }

# What the benchmark needs (Open MPI, PyTorch, matplotlib for the charts):
# installed when missing (apt is not touched when nothing is).
if [[ " $* " != *" --help "* ]]; then "$root/deploy/install-deps.sh"; fi

if [[ "${1:-}" == "--scale" ]]; then
  shift
  exec "$(dirname "$self")/scale.sh" "$@"
fi

if [[ "${1:-}" == "--multihost" ]]; then
  shift
  mh_args=() mh_build=1 mh_dir="build-bench"
  for arg in "$@"; do
    case "$arg" in
      --no-build) mh_build=0 ;;
      --build-dir=*) mh_dir="${arg#*=}"; mh_args+=("$arg") ;;
      *) mh_args+=("$arg") ;;
    esac
  done
  [[ "$(id -u)" == 0 ]] || { echo "run.sh --multihost: needs root (network namespaces and tc)" >&2; exit 1; }
  if ((mh_build)); then
    cmake -S . -B "$mh_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADACC_BUILD_TESTS=OFF \
      -DGRADACC_BUILD_BENCH=ON -DGRADACC_CUDA=OFF >/dev/null
    cmake --build "$mh_dir" --target gradacc_bench -j 2
  fi
  exec "$(dirname "$self")/multihost.sh" "${mh_args[@]}"
fi

sizes="1M,16M,64M"
workers="1,2,4,8"
reps=7
warmup=2
train_steps=400
train_reps=3
torch_steps=150
kernel_reps=5
kernel_min_time=0.2
tcp_reps=10
build="build-bench"
do_build=1
only="kernels,tcp,push,window,train,torch"
out="bench-results"
quick=0
sizes_set=0 workers_set=0 reps_set=0 warmup_set=0 steps_set=0 treps_set=0 tsteps_set=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --sizes=*) sizes="${arg#*=}"; sizes_set=1 ;;
    --workers=*) workers="${arg#*=}"; workers_set=1 ;;
    --reps=*) reps="${arg#*=}"; reps_set=1 ;;
    --warmup=*) warmup="${arg#*=}"; warmup_set=1 ;;
    --train-steps=*) train_steps="${arg#*=}"; steps_set=1 ;;
    --train-reps=*) train_reps="${arg#*=}"; treps_set=1 ;;
    --torch-steps=*) torch_steps="${arg#*=}"; tsteps_set=1 ;;
    --build-dir=*) build="${arg#*=}" ;;
    --no-build) do_build=0 ;;
    --only=*) only="${arg#*=}" ;;
    --out=*) out="${arg#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
if ((quick)); then
  ((sizes_set)) || sizes="1M,16M"
  ((workers_set)) || workers="2"
  ((reps_set)) || reps=3
  ((warmup_set)) || warmup=1
  ((steps_set)) || train_steps=100
  ((treps_set)) || train_reps=1
  ((tsteps_set)) || torch_steps=50
  kernel_reps=3 kernel_min_time=0.05 tcp_reps=5
fi
want() { [[ ",$only," == *",$1,"* ]]; }
log() { echo "bench: $*" >&2; }

# elements, label, write_job, mem_available_mb, fits
source "$(dirname "$self")/bench_lib.sh"

# ---------------------------------------------------------------- build
if ((do_build)); then
  log "building $build (Release, benchmarks only)"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADACC_BUILD_TESTS=OFF \
    -DGRADACC_BUILD_BENCH=ON -DGRADACC_CUDA=OFF >/dev/null
  # Two jobs: a TU with gRPC headers takes ~1 GB and these machines have 2 cores.
  cmake --build "$build" --target gradacc_bench -j 2
fi
bin_server="$build/server/gradacc-server"
bin_worker="$build/worker/gradacc-worker"
bin_bench="$build/tests/bench"
# What the parts asked for run.
needed=("$bin_server")
want kernels && needed+=("$bin_bench/gradacc_bench_kernels")
want tcp && needed+=("$bin_bench/gradacc_bench_tcp")
want push && needed+=("$bin_bench/gradacc_bench_push" "$bin_bench/gradacc_bench_grpc_floor")
want window && needed+=("$bin_bench/gradacc_bench_window" "$bin_bench/gradacc_bench_mpi")
want train && needed+=("$bin_worker")
for b in "${needed[@]}"; do
  [[ -x "$b" ]] || { echo "run.sh: $b is missing (build first, or drop --no-build)" >&2; exit 1; }
done

# ---------------------------------------------------------------- environment
stamp="$(date +%Y%m%d-%H%M%S)"
host="$(hostname -s 2>/dev/null || hostname)"
work="$(mktemp -d /tmp/gradacc-bench.XXXXXX)"
mkdir -p "$out"
logs="$out/$stamp-$host-logs"
mkdir -p "$logs"
raw="$work/raw.csv"
env_file="$work/env.txt"
: >"$raw"
server_pid=""

stop_server() {
  [[ -n "$server_pid" ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

thp="$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo unknown)"
thp_defrag="$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null || echo unknown)"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
mem_gb() { awk -v k="$1" '$1 == k":" { printf "%.1f", $2 / 1048576 }' /proc/meminfo; }
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then commit="$commit+dirty"; fi
openblas_dir=/usr/lib/x86_64-linux-gnu/openblas-pthread
have_torch=0
if /usr/bin/python3 -c 'import torch, torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null; then
  have_torch=1
fi
torch_note=""
if ((have_torch == 0)); then
  torch_note="python3-torch (with gloo) is not installed: the gloo and DDP rows are skipped"
elif [[ ! -e "$openblas_dir/libblas.so.3" ]]; then
  torch_note="$openblas_dir is missing (deploy/install-deps.sh; package libopenblas0-pthread): PyTorch runs with the default BLAS"
fi
peer_malloc="GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host=$host"
  echo "cpu=$cpu"
  echo "cores=$(nproc)"
  echo "kernel=$(uname -r)"
  echo "thp=$thp (defrag $thp_defrag)"
  echo "mem_total_gb=$(mem_gb MemTotal)"
  echo "commit=$commit"
  echo "mpi=$(mpirun --version 2>/dev/null | head -1)"
  echo "torch=$( ((have_torch)) && /usr/bin/python3 -c 'import torch; print(torch.__version__)' || echo absent)"
  echo "reps=$reps windows after $warmup warm-up windows; training: $train_steps steps x $train_reps runs"
  echo "setting.gradacc=server and workers as shipped (their own 2 MiB-aligned MADV_HUGEPAGE buffers; glibc keeps freed blocks for reuse, KeepFreedMemoryForReuse, as gradacc-server and gradacc-worker do); grpc = ClientOptions.shared_memory=false, shm = true"
  echo "setting.mpi=Open MPI, --bind-to none, oversubscribed, $peer_malloc (huge-page malloc: its best setting); buffers allocated once; + scale 1/M + gradacc's Adam step on every rank"
  echo "setting.gloo=PyTorch gloo over lo (file store), 1 thread per rank, LD_LIBRARY_PATH=$openblas_dir, $peer_malloc; all_reduce + div M + torch.optim.Adam on every rank"
  echo "setting.train=main job's MLP 784-256-128-10, 2 ranks, job's micro-batches; gradacc-worker with OPENBLAS_NUM_THREADS=1; DDP: 1 thread per rank, LD_LIBRARY_PATH=$openblas_dir, OMP_WAIT_POLICY=PASSIVE (both)"
  echo "setting.train_torch=PyTorch CNN of worker/python/examples/fashion_mnist_cnn.py, 2 ranks x 2 micro-batches x 16, Adam lr 0.003 cosine, $torch_steps windows; gradacc: mpirun -np 2 python3 (gradacc.torch, shared memory), DDP: ddp_cnn.py (gloo, no_sync); both 1 torch thread per rank, LD_LIBRARY_PATH=$openblas_dir, OMP_WAIT_POLICY=PASSIVE; evaluation not timed"
  [[ -z "$torch_note" ]] || echo "note=$torch_note"
} >"$env_file"
log "environment:"
sed 's/^/  /' "$env_file" >&2

# Open MPI as root and with more ranks than cores.
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1

collect() { grep '^RESULT ' | sed 's/^RESULT //' >>"$raw" || true; }
note() { echo "note,$1,$2,$3,$4,skipped,0,$5" >>"$raw"; log "skipped $1 P=$2 M=$3 $4: $5"; }

# Starts gradacc-server on a free port with job file $1 (+ flags); sets
# server_pid and server_addr.
start_server() {
  local name="$1"; shift
  local port_file="$work/$name.port"
  rm -f "$port_file"
  "$bin_server" --listen=127.0.0.1:0 --port_file="$port_file" "$@" >"$logs/$name.server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 300); do
    [[ -s "$port_file" ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s "$port_file" ]]; then
    cat "$logs/$name.server.log" >&2
    stop_server
    return 1
  fi
  server_addr="127.0.0.1:$(cat "$port_file")"
}


# ---------------------------------------------------------------- kernels
if want kernels; then
  log "kernels (Google Benchmark, $kernel_reps repetitions)"
  timeout 900 "$bin_bench/gradacc_bench_kernels" --benchmark_format=json \
    --benchmark_repetitions="$kernel_reps" --benchmark_report_aggregates_only=true \
    --benchmark_min_time="$kernel_min_time" >"$work/kernels.json" 2>"$logs/kernels.err" ||
    log "kernel benchmark failed (see $logs/kernels.err)"
  cp "$work/kernels.json" "$logs/kernels.json" 2>/dev/null || true
fi

# ---------------------------------------------------------------- tcp
if want tcp; then
  log "raw loopback TCP (64 MiB messages, $tcp_reps reps)"
  timeout 300 "$bin_bench/gradacc_bench_tcp" --mib=64 --reps="$tcp_reps" --warmup=2 2>"$logs/tcp.err" | collect
fi

# ---------------------------------------------------------------- push / pull
if want push; then
  p16=$((16 << 20))
  for shm in off on; do
    setting=$([[ $shm == on ]] && echo shm || echo grpc)
    log "push/pull of one worker, P=16M, $setting"
    # Two workers: the timed push (worker 0's) never completes the window, so
    # it measures the transfer, not the step (a closing push is answered
    # once the step is published).
    write_job "$work/push.job" "$p16" 2 $((warmup + reps))
    if start_server "push-$setting" --job="$work/push.job"; then
      timeout 600 "$bin_bench/gradacc_bench_push" --server="$server_addr" --shm="$shm" --warmup="$warmup" \
        2>"$logs/push-$setting.err" | collect || log "push $setting failed (see $logs/push-$setting.err)"
      stop_server
    else
      log "the server did not start for push $setting"
    fi
  done
  # gRPC's own floor: the same payload and messages, dropped on arrival by a
  # bare server (none of gradacc's work), over 1 and 2 connections.
  log "gRPC floor: 64 MiB pushed to a server that drops it, 1 and 2 connections"
  timeout 600 "$bin_bench/gradacc_bench_grpc_floor" --reps="$tcp_reps" --warmup=2 2>"$logs/grpc-floor.err" |
    collect || log "gRPC floor failed (see $logs/grpc-floor.err)"
fi

# ---------------------------------------------------------------- windows
if want window; then
  IFS=, read -r -a size_list <<<"$sizes"
  IFS=, read -r -a worker_list <<<"$workers"
  windows=$((warmup + reps))
  for s in "${size_list[@]}"; do
    p=$(elements "$s")
    pmb=$(( (p * 4) >> 20 ))
    for m in "${worker_list[@]}"; do
      # Generous bound: 0.1 s per MiB-of-floats per rank per window, + startup.
      limit=$(( 120 + windows * (p >> 20) * m / 10 + windows * 2 ))
      tag="$(label "$p")-M$m"
      # Memory estimates (MB): gradacc server (params, accumulators, Adam m/v,
      # message buffers, a receive buffer per worker: 16 x 256 MB measured
      # for 64M, M=8) + M workers (params, staging, grad, messages); MPI ranks
      # (params, grad, Adam m/v, MPI temporaries); PyTorch ranks (param,
      # grad, exp_avg, exp_avg_sq, temporaries, runtime).
      need_gradacc=$(( (8 + m) * pmb + m * (4 * pmb + 100) ))
      need_mpi=$(( m * (5 * pmb + 100) ))
      need_gloo=$(( m * (6 * pmb + 400) ))

      for shm in on off; do
        setting=$([[ $shm == on ]] && echo shm || echo grpc)
        if ! fits "$need_gradacc"; then note window gradacc "$p" "$m" "$setting" "needs ~${need_gradacc} MB"; continue; fi
        log "window P=$(label "$p") M=$m gradacc $setting"
        write_job "$work/window.job" "$p" "$m" "$windows"
        if start_server "window-$tag-$setting" --job="$work/window.job"; then
          timeout "$limit" mpirun -np "$m" --bind-to none "$bin_bench/gradacc_bench_window" \
            --server="$server_addr" --shm="$shm" --warmup="$warmup" 2>"$logs/window-$tag-$setting.err" | collect ||
            log "gradacc window $tag $setting failed (see $logs/window-$tag-$setting.err)"
          rss=$(awk '$1 == "VmHWM:" { print int($2 / 1024) }' "/proc/$server_pid/status" 2>/dev/null || true)
          if [[ -n "$rss" ]]; then echo "window,gradacc_server,$p,$m,$setting,peak_rss,$rss,MB" >>"$raw"; fi
          stop_server
        else
          log "the server did not start for $tag $setting"
        fi
      done

      write_job "$work/peer.job" "$p" "$m" "$windows"
      for op in allreduce reduce_bcast; do
        if ! fits "$need_mpi"; then note window "mpi_$op" "$p" "$m" hugetlb "needs ~${need_mpi} MB"; continue; fi
        log "window P=$(label "$p") M=$m MPI $op"
        timeout "$limit" mpirun -np "$m" --bind-to none -x "$peer_malloc" "$bin_bench/gradacc_bench_mpi" \
          --job="$work/peer.job" --op="$op" --reps="$reps" --warmup="$warmup" --setting=hugetlb \
          2>"$logs/mpi-$op-$tag.err" | collect || log "MPI $op $tag failed (see $logs/mpi-$op-$tag.err)"
      done

      if ((have_torch)); then
        if ! fits "$need_gloo"; then note window gloo "$p" "$m" openblas+hugetlb "needs ~${need_gloo} MB"; continue; fi
        log "window P=$(label "$p") M=$m gloo"
        env GLOO_SOCKET_IFNAME=lo LD_LIBRARY_PATH="$openblas_dir" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
          OMP_WAIT_POLICY=PASSIVE "$peer_malloc" \
          timeout "$limit" /usr/bin/python3 tests/bench/torch_peer.py --p="$p" --m="$m" --reps="$reps" \
          --warmup="$warmup" --setting=openblas+hugetlb --timeout_s="$limit" 2>"$logs/gloo-$tag.err" | collect ||
          log "gloo $tag failed (see $logs/gloo-$tag.err)"
      fi
    done
  done
fi

# ---------------------------------------------------------------- training
if want train; then
  log "training throughput: main job's MLP, 2 workers, $train_steps steps x $train_reps runs"
  # The DDP run copies the job's geometry and learning rate (the server's
  # --dump_job of the first run; the built-in job: 2 x 16, lr 0.002).
  k=2 b=16 lr=0.002 params=235146
  for r in $(seq "$train_reps"); do
    if start_server "train-$r" --workers=2 --total_steps="$train_steps" --dump_job="$work/train.job"; then
      timeout 900 mpirun -np 2 --bind-to none -x OPENBLAS_NUM_THREADS=1 -x OMP_WAIT_POLICY=PASSIVE \
        "$bin_worker" --server="$server_addr" --steps="$train_steps" --log_every="$train_steps" \
        >"$logs/train-$r.worker.log" 2>&1 || log "gradacc training run $r failed (see $logs/train-$r.worker.log)"
      stop_server
      k=$(sed -n 's/^ *micro_batches: \([0-9]*\)/\1/p' "$work/train.job" | head -1)
      b=$(sed -n 's/^ *micro_batch_size: \([0-9]*\)/\1/p' "$work/train.job" | head -1)
      lr=$(sed -n 's/^ *lr: \([0-9.e-]*\)/\1/p' "$work/train.job" | head -1)
      params=$(sed -n "s/.* \([0-9]*\) parameters.*/\1/p" "$logs/train-$r.server.log" | head -1)
      # The worker's last progress line: samples/s from its first window to its last.
      rate=$(sed -n "s/^step *$train_steps\/$train_steps .*| \([0-9.]*\) samples\/s.*/\1/p" "$logs/train-$r.worker.log" | tail -1)
      if [[ -n "$rate" ]]; then
        echo "train,gradacc,${params:-0},2,default,samples_per_s_run,$rate,samples/s" >>"$raw"
      fi
    fi
    if ((have_torch)); then
      env GLOO_SOCKET_IFNAME=lo LD_LIBRARY_PATH="$openblas_dir" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        OMP_WAIT_POLICY=PASSIVE timeout 900 /usr/bin/python3 tests/bench/ddp_mlp.py --m=2 --k="${k:-2}" \
        --b="${b:-16}" --steps="$train_steps" --lr="${lr:-0.002}" --setting=openblas \
        >"$logs/ddp-$r.log" 2>&1 || log "DDP run $r failed (see $logs/ddp-$r.log)"
      grep '^RESULT train,ddp' "$logs/ddp-$r.log" | sed 's/^RESULT //; s/,samples_per_s,/,samples_per_s_run,/; s/,steps_per_s,/,steps_per_s_run,/' >>"$raw" || true
    fi
  done
fi

# ---------------------------------------------------------------- PyTorch CNN
if want torch; then
  example=worker/python/examples/fashion_mnist_cnn.py
  if ((have_torch == 0)) || [[ ! -e "$build/python/gradacc/__init__.py" ]]; then
    note train_torch 0 2 python "python3-torch or the Python package (pybind11-dev, python3-dev) is missing"
  else
    k=2 b=16  # the example's geometry and learning rate
    limit=$((torch_steps * 2 * k * b))  # one epoch of torch_steps windows
    log "training throughput: PyTorch CNN, gradacc Python workers vs DDP, 2 ranks, $torch_steps windows x $train_reps runs"
    torch_env=(LD_LIBRARY_PATH="$openblas_dir" OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE)
    for r in $(seq "$train_reps"); do
      env PYTHONPATH="$root/$build/python" /usr/bin/python3 "$example" --write_job="$work/torch.job" --workers=2 \
        --micro_batches=$k --micro_batch_size=$b --epochs=1 --train_limit=$limit >"$logs/torch-$r.job.log" 2>&1 ||
        log "writing the CNN job failed (see $logs/torch-$r.job.log)"
      if start_server "torch-$r" --job="$work/torch.job"; then
        env "${torch_env[@]}" PYTHONPATH="$root/$build/python" timeout 900 mpirun -np 2 --bind-to none \
          -x LD_LIBRARY_PATH -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x OMP_WAIT_POLICY -x PYTHONPATH \
          /usr/bin/python3 "$example" --server="$server_addr" --train_limit=$limit --test_limit=1000 --status=0 \
          >"$logs/torch-$r.worker.log" 2>&1 || log "gradacc CNN run $r failed (see $logs/torch-$r.worker.log)"
        stop_server
        # "trained N windows in S s (R samples/s, evaluation excluded)"
        rate=$(sed -n 's/^trained .* (\([0-9.]*\) samples\/s.*/\1/p' "$logs/torch-$r.worker.log" | tail -1)
        params=$(sed -n 's/.*(FashionCNN, \([0-9]*\) parameters).*/\1/p' "$logs/torch-$r.worker.log" | head -1)
        if [[ -n "$rate" ]]; then
          echo "train_torch,gradacc,${params:-0},2,python,samples_per_s_run,$rate,samples/s" >>"$raw"
        fi
      fi
      env "${torch_env[@]}" GLOO_SOCKET_IFNAME=lo timeout 900 /usr/bin/python3 tests/bench/ddp_cnn.py --m=2 --k=$k \
        --b=$b --steps="$torch_steps" --lr=0.003 --setting=openblas >"$logs/ddp-cnn-$r.log" 2>&1 ||
        log "DDP CNN run $r failed (see $logs/ddp-cnn-$r.log)"
      grep '^RESULT train_torch,ddp' "$logs/ddp-cnn-$r.log" | sed 's/^RESULT //; s/,samples_per_s,/,samples_per_s_run,/' \
        >>"$raw" || true
    done
  fi
fi

# ---------------------------------------------------------------- report
blas=$(sed -n 's/.*BLAS \([^ ]*[^, ]\),* .*/\1/p' "$logs"/ddp-*.log 2>/dev/null | head -1 || true)
if [[ -n "$blas" ]]; then echo "blas.ddp=$blas" >>"$env_file"; fi
cp "$raw" "$logs/raw.csv"
cp "$env_file" "$logs/env.txt"
report_args=(--raw "$raw" --env "$env_file" --csv "$out/$stamp-$host.csv" --md "$out/$stamp-$host.md")
[[ -s "$work/kernels.json" ]] && report_args+=(--kernels "$work/kernels.json")
python3 tests/bench/report.py "${report_args[@]}"
log "wrote $out/$stamp-$host.csv and $out/$stamp-$host.md (logs: $logs)"
