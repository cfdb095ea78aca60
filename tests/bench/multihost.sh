#!/usr/bin/env bash
# gradacc across simulated hosts with real, shaped links (issue 13):
#   tests/bench/run.sh --multihost [OPTIONS]      (or this script directly)
#
#   --rate=200mbit     each host's link, each direction (tc tbf on both ends)
#   --delay=0ms        added one-way latency per link (tc netem; refused with
#                      a clear message when the kernel has no sch_netem)
#   --queue=200ms      the most a link's queue holds, in time at its rate
#                      (tbf latency; a switch port holds far less)
#   --cc=NAME          the hosts' TCP congestion control (default: the
#                      machine's, which the namespaces inherit; a namespace
#                      may use only those net.ipv4.tcp_allowed_congestion_control
#                      lists)
#   --sizes=16M,64M    f32 parameters of the job
#   --reps=3 --warmup=1
#   --shards-per-host=auto  shards per server host (sharded configs), served
#                      by one gradacc-server per host on one port; auto:
#                      shards of 128 Ki elements (512 KiB) with 4 server
#                      hosts, P / 2^19 per host (32 at 16M, 128 at 64M)
#   --process-per-shard  one gradacc-server per shard instead (the layout
#                      before one process could serve several shards)
#   --configs=LIST     default all: ps1,ps2,ps4,colocated,hier,bf16,mpi,mpi_ring,gloo
#   --server-flags="--running_sum=false ..."  added to every gradacc-server
#   --build-dir=build-bench --out=bench-results
#
# Four worker hosts (w0..w3) and four server hosts (s0..s3) are network
# namespaces, each with its own hostname, whose veth links meet at a bridge
# in another namespace; a head namespace (unshaped) runs mpirun. Each host's
# link is shaped in both directions with tc (tbf; netem for the delay). The
# addresses (10.233.N.0/24) exist only inside these namespaces: no packet
# leaves them, and nothing of the root namespace is touched. Then, in one
# run, for each size: gradacc with its shards on 1, 2 and 4 separate server
# hosts (--shards-per-host shards on each, served by one gradacc-server per
# host; shard j on host j mod k, so that a worker's wave of k pushes reaches
# every server host), shards co-located on the worker hosts, hierarchical
# (2 ranks per worker host, shards on 4 server hosts), bf16 on the wire (4
# server hosts); Open MPI MPI_Allreduce (its
# default tuned algorithm, and ring) and gloo all_reduce, each + the same
# Adam on every rank. A sampler in the bridge namespace reads every link's
# byte counters and the CPUs' time every 50 ms; each program marks its timed
# windows (--phase_file), so the report gives, per configuration, the median
# window, the bytes each link carried per window, the busiest link's use of
# its shaped rate, and the CPU use. Every gradacc configuration's final
# parameters are compared with the single-server, single-host gRPC run of
# the same job (on loopback, in a namespace of its own); hierarchical across
# hosts reduces in its documented per-host order and is compared with
# itself run twice. Writes <out>/<time>-<host>-multihost.{csv,md,png}.
#
# Needs root (namespaces, tc); refuses to run without it. Everything it made
# (namespaces, veths, bridge, qdiscs, processes) is removed on exit, also on
# failure or SIGINT/SIGTERM. Never run by ctest or CI.
set -uo pipefail
self="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
here="$(dirname "$self")"
root="$(cd "$here/../.." && pwd)"
cd "$root"
usage() { sed -n '2,/^# Four worker hosts/p' "$self" | sed '$d' | sed 's/^# \{0,1\}//'; }

rate="200mbit" delay="0ms" queue="200ms" sizes="16M,64M" reps=3 warmup=1 per_host=auto process_per_shard=0 cc=""
configs="ps1,ps2,ps4,colocated,hier,bf16,mpi,mpi_ring,gloo"
server_flags=""
build="build-bench" out="bench-results"
for arg in "$@"; do
  case "$arg" in
    --rate=*) rate="${arg#*=}" ;;
    --delay=*) delay="${arg#*=}" ;;
    --queue=*) queue="${arg#*=}" ;;
    --cc=*) cc="${arg#*=}" ;;
    --sizes=*) sizes="${arg#*=}" ;;
    --reps=*) reps="${arg#*=}" ;;
    --warmup=*) warmup="${arg#*=}" ;;
    --shards-per-host=*) per_host="${arg#*=}" ;;
    --process-per-shard) process_per_shard=1 ;;
    --configs=*) configs="${arg#*=}" ;;
    --server-flags=*) server_flags="${arg#*=}" ;;
    --build-dir=*) build="${arg#*=}" ;;
    --out=*) out="${arg#*=}" ;;
    -h|--help) usage; exit 0 ;;
    *) echo "multihost: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
say() { echo "multihost: $*" >&2; }
die() { say "$*"; exit 1; }

[[ "$(id -u)" == 0 ]] || die "needs root (network namespaces and tc); run it as root, e.g. sudo $0"
for tool in ip tc unshare mpirun /usr/bin/python3; do
  command -v "$tool" >/dev/null || die "$tool not found (deploy/install-deps.sh installs what is missing)"
done
server_bin="$build/server/gradacc-server"
bench_bin="$build/tests/bench"
for b in "$server_bin" "$bench_bin/gradacc_bench_window" "$bench_bin/gradacc_bench_mpi"; do
  [[ -x "$b" ]] || die "$b is missing (tests/bench/run.sh --multihost builds it)"
done
server_bin="$(realpath "$server_bin")" bench_bin="$(realpath "$bench_bin")"
agent="$root/tests/multihost/ns-agent.sh"

# elements, label, write_job, mem_available_mb, fits
source "$root/tests/bench/bench_lib.sh"
want() { [[ ",$configs," == *",$1,"* ]]; }

# ---------------------------------------------------------------- cleanup
tmp="$(mktemp -d /tmp/gradacc-mhb.XXXXXX)"
pfx="gmhb-$$"
made_ns=()
stamp="$(date +%Y%m%d-%H%M%S)"
host="$(hostname -s 2>/dev/null || hostname)"
mkdir -p "$out"
base="$out/$stamp-$host-multihost"
logs="$base-logs"
mkdir -p "$logs"

kill_ns_pids() {  # every process in our namespaces: TERM, 3 s, KILL
  local ns pids=()
  for ns in "${made_ns[@]}"; do
    mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
  done
  [[ ${#pids[@]} -eq 0 ]] && return 0
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in $(seq 30); do
    local any=0 p
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && any=1; done
    [[ $any == 0 ]] && return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
  return 0
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  kill_ns_pids
  local ns
  for ns in "${made_ns[@]}"; do ip netns delete "$ns" 2>/dev/null || say "warning: could not delete netns $ns"; done
  wait 2>/dev/null
  rm -rf "${TMPDIR:-/tmp}/ompi.$pfx-"* "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- hosts
net="10.233.$((RANDOM % 250 + 1))"
subnet="$net.0/24"
declare -A ip_of ns_of
workers=(w0 w1 w2 w3) servers=(s0 s1 s2 s3)
ns_br="$pfx-br"
ip netns add "$ns_br" || die "cannot create a network namespace"
made_ns+=("$ns_br")
ip -n "$ns_br" link set lo up
ip -n "$ns_br" link add br0 type bridge || die "cannot create a bridge"
ip -n "$ns_br" link set br0 up
# tbf's bucket: at least a few full-size GSO packets, else ~2 ms at the rate.
rate_bits=$(/usr/bin/python3 - "$rate" <<'EOF'
import re, sys
m = re.fullmatch(r"([0-9.]+)\s*([kmg]?)(bit|bps)?", sys.argv[1].lower())
if not m: sys.exit(1)
v = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
print(int(v * 8 if m.group(3) == "bps" else v))
EOF
) || die "cannot read --rate=$rate (e.g. 200mbit, 1gbit)"
burst=$(( rate_bits / 8 / 500 ))
(( burst < 262144 )) && burst=262144
delay_ms=$(/usr/bin/python3 -c "import sys,re; m=re.fullmatch(r'([0-9.]+)(ms|us|s)?', sys.argv[1]); v=float(m.group(1)); print(v*{'ms':1,'us':1e-3,'s':1e3,None:1}[m.group(2)])" "$delay") ||
  die "cannot read --delay=$delay (e.g. 0ms, 2ms)"

shape() {  # NS DEV: tbf at $rate, after netem when --delay > 0
  if [[ "$delay_ms" != "0.0" ]]; then
    ip netns exec "$1" tc qdisc add dev "$2" root handle 1: netem delay "$delay" 2>"$tmp/netem.err" ||
      die "--delay needs tc netem, which this kernel lacks ($(head -1 "$tmp/netem.err")); use --delay=0ms"
    ip netns exec "$1" tc qdisc add dev "$2" parent 1: handle 2: tbf rate "$rate" burst "$burst" latency "$queue" ||
      die "tc tbf failed on $2"
  else
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$rate" burst "$burst" latency "$queue" ||
      die "tc tbf failed on $2 (does this kernel have sch_tbf?)"
  fi
}

add_host() {  # NAME ADDRESS SHAPED(0/1)
  local name="$1" ns="$pfx-$1"
  ip netns add "$ns" || die "cannot create netns $ns"
  made_ns+=("$ns")
  ip -n "$ns" link set lo up
  if [[ -n "$cc" ]]; then
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$cc" ||
      die "cannot use TCP congestion control '$cc' (available: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control))"
  fi
  ip -n "$ns_br" link add "v-$name" type veth peer name eth0 netns "$ns" || die "veth for $name"
  ip -n "$ns_br" link set "v-$name" master br0
  ip -n "$ns_br" link set "v-$name" up
  ip -n "$ns" addr add "$2/24" dev eth0
  ip -n "$ns" link set eth0 up
  if [[ "$3" == 1 ]]; then
    shape "$ns" eth0            # host -> bridge
    shape "$ns_br" "v-$name"    # bridge -> host
  fi
  ip_of[$name]="$2"
  ns_of[$name]="$ns"
}
add_host hd "$net.2" 0
for i in 0 1 2 3; do add_host "w$i" "$net.$((11 + i))" 1; add_host "s$i" "$net.$((21 + i))" 1; done
# Reported with the figures: the hosts' TCP congestion control (the
# namespaces inherit the machine's).
tcp_cc="$(ip netns exec "${ns_of[w0]}" sysctl -n net.ipv4.tcp_congestion_control 2>/dev/null || echo unknown)"
ns_one="$pfx-one"  # the reference: one host, loopback only
ip netns add "$ns_one" || die "cannot create netns $ns_one"
made_ns+=("$ns_one")
ip -n "$ns_one" link set lo up
say "hosts w0..w3 ($net.11-14), s0..s3 ($net.21-24), links $rate each way, delay $delay; logs in $logs"

# Runs a command (or function) in the background and waits for it, so that
# SIGINT/SIGTERM reach the trap at once instead of when the command ends
# (bash runs traps only between foreground commands, but interrupts wait).
run_bg() {
  "$@" &
  wait $!
}

# Runs CMD on host NAME (its netns and its own hostname), in the background;
# sets $last_pid.
on_host_bg() {
  local name="$1" logf="$2"
  shift 2
  # shellcheck disable=SC2016
  ip netns exec "${ns_of[$name]}" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$pfx-$name" "$@" \
    >"$logf" 2>&1 &
  last_pid=$!
}
free_port() {  # NAME: a port the OS picks on that host
  ip netns exec "${ns_of[$1]}" /usr/bin/python3 -c \
    'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${ip_of[$1]}"
}

# The link sampler: every link's counters (bridge side: rx = the host sent)
# and /proc/stat's cpu line, every 50 ms, until killed.
sampler_log="$tmp/samples.csv"
ip netns exec "$ns_br" /usr/bin/python3 - "$sampler_log" <<'EOF' &
import os, sys, time
out = open(sys.argv[1], "w", buffering=1)
links = sorted(d for d in os.listdir("/sys/class/net") if d.startswith("v-"))
out.write("t,cpu_busy,cpu_total," + ",".join(f"{l}_rx,{l}_tx" for l in links) + "\n")
while True:
    cols = [f"{time.time():.3f}"]
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    cols += [str(sum(v) - idle), str(sum(v))]
    for l in links:
        for k in ("rx_bytes", "tx_bytes"):
            with open(f"/sys/class/net/{l}/statistics/{k}") as f:
                cols.append(f.read().strip())
    out.write(",".join(cols) + "\n")
    time.sleep(0.05)
EOF
sampler_pid=$!

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent="$agent"
hosts_env=""
for n in w0 w1 w2 w3; do hosts_env+="${ip_of[$n]}=${ns_of[$n]} "; done
export GRADACC_MH_HOSTS="$hosts_env"
mpi_hosts() {  # RANKS_PER_HOST
  local h list=""
  for h in w0 w1 w2 w3; do list+="${ip_of[$h]}:$1,"; done
  echo "${list%,}"
}
mpi_common=(--oversubscribe --bind-to none --mca plm_rsh_agent "$agent" --mca oob_tcp_if_include "$subnet"
            --mca btl "self,tcp" --mca btl_tcp_if_include "$subnet" -x GRADACC_MH_HOSTS)


results="$tmp/results.csv"   # config,P,metric,value
phases="$tmp/phases.csv"     # config,P,start,end
: >"$results"
: >"$phases"
collect() {  # CONFIG P PHASEFILE: RESULT lines on stdin
  local line
  while IFS= read -r line; do
    [[ "$line" == RESULT\ * ]] || continue
    IFS=, read -r _ _ _ _ _ metric value _ <<<"${line#RESULT }"
    echo "$1,$2,$metric,$value" >>"$results"
  done
  if [[ -f "$3" ]]; then
    local s e
    s=$(awk '$1 == "start" { print $2 }' "$3" | head -1)
    e=$(awk '$1 == "end" { print $2 }' "$3" | tail -1)
    [[ -n "$s" && -n "$e" ]] && echo "$1,$2,$s,$e" >>"$phases"
  fi
}

server_pids=()
stop_servers() {
  local p
  for p in "${server_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${server_pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  server_pids=()
}
# start_shards JOB TAG HOST... : shard j on the j-th listed host (a host
# may repeat); sets $servers (every shard's address, in shard order). Each
# host runs one gradacc-server serving all its shards on one port (so a
# worker reaches them over one connection), or, with --process-per-shard,
# one process per shard.
start_shards() {
  local job="$1" tag="$2"
  shift 2
  local hosts=("$@") k=${#@} j addrs=() port h
  local -A port_of=() shards_of=()
  local order=()
  for j in $(seq 0 $((k - 1))); do
    h="${hosts[$j]}"
    if [[ $process_per_shard == 1 ]]; then h="${hosts[$j]}#$j"; fi
    if [[ -z "${port_of[$h]:-}" ]]; then
      port_of[$h]=$(free_port "${hosts[$j]}") || die "no free port on ${hosts[$j]}"
      order+=("$h")
    fi
    shards_of[$h]+="${shards_of[$h]:+,}$j"
    addrs+=("${ip_of[${hosts[$j]}]}:${port_of[$h]}")
  done
  servers="$(IFS=,; echo "${addrs[*]}")"
  local n=0
  for h in "${order[@]}"; do
    on_host_bg "${h%%#*}" "$logs/$tag-server$n.log" "$server_bin" --job="$job" \
      --listen="${ip_of[${h%%#*}]}:${port_of[$h]}" --num_shards="$k" --shard="${shards_of[$h]}" \
      --shard_peers="$servers" --shared_memory_dir= --allow_remote_plaintext --port_file="$tmp/$tag-server$n.port" \
      $server_flags
    server_pids+=("$last_pid")
    n=$((n + 1))
  done
  for j in $(seq 0 $((n - 1))); do
    for _ in $(seq 300); do [[ -s "$tmp/$tag-server$j.port" ]] && break; sleep 0.1; done
    [[ -s "$tmp/$tag-server$j.port" ]] || { say "server $j of $tag did not start (see $logs/$tag-server$j.log)"; return 1; }
  done
}

# gradacc_config TAG P RANKS_PER_HOST WINDOW_ARGS... (after start_shards)
run_gradacc() {
  local tag="$1" p="$2" rph="$3"
  shift 3
  local np=$((4 * rph)) limit=$((600 + (p >> 20) * 40))
  run_bg ip netns exec "${ns_of[hd]}" timeout "$limit" mpirun -np "$np" --host "$(mpi_hosts "$rph")" \
    "${mpi_common[@]}" "$bench_bin/gradacc_bench_window" --server="$servers" --shm=off --warmup="$warmup" \
    --timeout_s="$limit" --phase_file="$tmp/$tag.phase" --params_out="$tmp/$tag.params" "$@" \
    >"$tmp/$tag.out" 2>"$logs/$tag.err" || say "$tag failed (see $logs/$tag.err)"
  collect "${tag%%-*}" "$p" "$tmp/$tag.phase" <"$tmp/$tag.out"
}

# The reference: single server, single host, gRPC; same job, same ranks.
run_reference() {  # TAG P RANKS WIRE
  local tag="$1" p="$2" np="$3" port
  port=$(ip netns exec "$ns_one" /usr/bin/python3 -c \
    'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ip netns exec "$ns_one" "$server_bin" --job="$tmp/job-$p-$np" --listen="127.0.0.1:$port" --shared_memory_dir= \
    --port_file="$tmp/$tag.port" >"$logs/$tag-server.log" 2>&1 &
  server_pids+=("$!")
  for _ in $(seq 300); do [[ -s "$tmp/$tag.port" ]] && break; sleep 0.1; done
  run_bg ip netns exec "$ns_one" timeout 1800 mpirun -np "$np" --oversubscribe --bind-to none --mca btl self,vader \
    "$bench_bin/gradacc_bench_window" --server="127.0.0.1:$port" --shm=off --warmup="$warmup" \
    --wire_format="$4" --params_out="$tmp/$tag.params" >"$logs/$tag.out" 2>"$logs/$tag.err" ||
    say "reference $tag failed (see $logs/$tag.err)"
  stop_servers
}

check_same() {  # CONFIG P PARAMS REFERENCE
  local verdict=different
  if [[ ! -s "$3" || ! -s "$4" ]]; then verdict=missing; elif cmp -s "$3" "$4"; then verdict=identical; fi
  echo "$1,$2,bit_identical,$verdict" >>"$results"
  [[ $verdict == identical ]] || say "$1 P=$2: final parameters $verdict (vs $(basename "$4"))"
}

# shard_hosts PREFIX K: sets $hosts to $sph shards on each of the hosts
# PREFIX0 .. PREFIX(K-1), interleaved (shard j on host j mod K).
shard_hosts() {
  local h
  hosts=()
  for _ in $(seq "$sph"); do for h in $(seq 0 $(($2 - 1))); do hosts+=("$1$h"); done; done
}

IFS=, read -r -a size_list <<<"$sizes"
windows=$((warmup + reps))
for s in "${size_list[@]}"; do
  p=$(elements "$s")
  sph=$per_host
  if [[ $sph == auto ]]; then sph=$((p >> 19)); ((sph < 1)) && sph=1; fi
  write_job "$tmp/job-$p-4" "$p" 4 "$windows" multihost-bench
  write_job "$tmp/job-$p-8" "$p" 8 "$windows" multihost-bench
  say "P=$s: reference runs (one host, loopback)"
  run_reference "ref-$p-f32" "$p" 4 f32
  want bf16 && run_reference "ref-$p-bf16" "$p" 4 bf16
  for k in 1 2 4; do
    want "ps$k" || continue
    shard_hosts s "$k"
    say "P=$s: gradacc, ${#hosts[@]} shards on $k server host(s)"
    if start_shards "$tmp/job-$p-4" "ps$k-$p" "${hosts[@]}"; then
      run_gradacc "ps$k-$p" "$p" 1
      check_same "ps$k" "$p" "$tmp/ps$k-$p.params" "$tmp/ref-$p-f32.params"
    fi
    stop_servers
  done
  if want colocated; then
    shard_hosts w 4
    say "P=$s: gradacc, ${#hosts[@]} shards co-located on the worker hosts"
    if start_shards "$tmp/job-$p-4" "colocated-$p" "${hosts[@]}"; then
      run_gradacc "colocated-$p" "$p" 1
      check_same colocated "$p" "$tmp/colocated-$p.params" "$tmp/ref-$p-f32.params"
    fi
    stop_servers
  fi
  if want bf16; then
    shard_hosts s 4
    say "P=$s: gradacc, bf16 on the wire, shards on 4 server hosts"
    if start_shards "$tmp/job-$p-4" "bf16-$p" "${hosts[@]}"; then
      run_gradacc "bf16-$p" "$p" 1 --wire_format=bf16
      check_same bf16 "$p" "$tmp/bf16-$p.params" "$tmp/ref-$p-bf16.params"
    fi
    stop_servers
  fi
  if want hier; then
    shard_hosts s 4
    for run in 1 2; do
      say "P=$s: gradacc hierarchical, 2 ranks per worker host, shards on 4 server hosts (run $run)"
      if start_shards "$tmp/job-$p-8" "hier$run-$p" "${hosts[@]}"; then
        if [[ $run == 1 ]]; then
          run_gradacc "hier-$p" "$p" 2 --hierarchical
        else  # untimed: the second run only checks determinism
          run_gradacc "hierb-$p" "$p" 2 --hierarchical
          sed -i '/^hierb,/d' "$results" "$phases"
        fi
      fi
      stop_servers
    done
    check_same hier "$p" "$tmp/hier-$p.params" "$tmp/hierb-$p.params"
  fi
  for algo in mpi mpi_ring; do
    want "$algo" || continue
    say "P=$s: Open MPI MPI_Allreduce ($([[ $algo == mpi ]] && echo "default tuned" || echo ring)) + Adam"
    extra=()
    [[ $algo == mpi_ring ]] && extra=(--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4)
    run_bg ip netns exec "${ns_of[hd]}" timeout $((600 + (p >> 20) * 40)) mpirun -np 4 --host "$(mpi_hosts 1)" \
      "${mpi_common[@]}" "${extra[@]}" "$bench_bin/gradacc_bench_mpi" --job="$tmp/job-$p-4" --op=allreduce \
      --reps="$reps" --warmup="$warmup" --setting="$algo" --phase_file="$tmp/$algo-$p.phase" \
      >"$tmp/$algo-$p.out" 2>"$logs/$algo-$p.err" || say "$algo failed (see $logs/$algo-$p.err)"
    collect "$algo" "$p" "$tmp/$algo-$p.phase" <"$tmp/$algo-$p.out"
  done
  if want gloo; then
    if /usr/bin/python3 -c 'import torch.distributed as d; assert d.is_gloo_available()' 2>/dev/null; then
      say "P=$s: gloo all_reduce + torch.optim.Adam"
      rm -f "$tmp/gloo-store-$p"
      gloo_pids=()
      for r in 0 1 2 3; do
        on_host_bg "w$r" "$logs/gloo-$p-rank$r.log" env GLOO_SOCKET_IFNAME=eth0 OMP_NUM_THREADS=1 \
          /usr/bin/python3 "$here/torch_peer.py" --p="$p" --m=4 --rank="$r" --store="$tmp/gloo-store-$p" \
          --reps="$reps" --warmup="$warmup" --setting=gloo --phase_file="$tmp/gloo-$p.phase"
        gloo_pids+=("$last_pid")
      done
      for pid in "${gloo_pids[@]}"; do wait "$pid" || say "a gloo rank failed (see $logs/gloo-$p-rank*.log)"; done
      collect gloo "$p" "$tmp/gloo-$p.phase" <"$logs/gloo-$p-rank0.log"
    else
      say "gloo skipped: python3-torch with gloo is not installed"
    fi
  fi
done
kill "$sampler_pid" 2>/dev/null
wait "$sampler_pid" 2>/dev/null

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && commit="$commit+dirty"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
/usr/bin/python3 "$here/multihost_report.py" --results="$results" --phases="$phases" --samples="$sampler_log" \
  --rate-bits="$rate_bits" --rate="$rate" --delay="$delay" --queue="$queue" \
  --tcp="$tcp_cc" --per-host="$per_host" --process-per-shard="$process_per_shard" --reps="$reps" \
  --warmup="$warmup" --machine="$(nproc) CPUs, $cpu" --commit="$commit" \
  --csv="$base.csv" --md="$base.md" --png="$base.png"
cp "$sampler_log" "$logs/samples.csv" 2>/dev/null
wrote=()
for f in "$base.csv" "$base.md" "$base.png"; do [[ -s "$f" ]] && wrote+=("$f"); done
say "wrote ${wrote[*]} (logs: $logs)"
[[ -s "$base.png" ]] || say "no chart: python3-matplotlib is not importable (deploy/install-deps.sh installs it)"
