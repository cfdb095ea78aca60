#!/usr/bin/env bash
# The multihost tier: "MPI across hosts" without a cluster.
#   tests/multihost/run.sh PATH/TO/gradacc-server PATH/TO/gradacc-worker
#
# Four test hosts are network namespaces (srv, srv2, a, b), each with its own
# hostname (a UTS namespace), whose veth links meet at a bridge in a fourth
# namespace (br). Their addresses are in 10.231.N.0/24 and exist only inside
# those namespaces, so no packet leaves them; the root namespace's interfaces,
# routes and firewall are not touched. gradacc-server serves on the srv
# address; mpirun, also on srv (the head node), starts 2 ranks on each of a
# and b through Open MPI's rsh launcher, whose agent (ns-agent.sh) enters the
# host's namespaces instead of ssh'ing to it. Every host's link is shaped
# (tc tbf, 200 Mbit/s each way) when the kernel has sch_tbf. A sharded job
# runs with four shards interleaved over srv and srv2 (one server process
# per host serving two shards), and its parts must equal the one-host run's
# parameters bit for bit. Then the same job runs on one
# host (a fifth namespace with only loopback: server on 127.0.0.1, mpirun
# -np 4) and both final parameter files must be byte-identical: same data
# order, same reduction order, whatever the network.
#
# Needs root for `ip netns` and `unshare --uts`; without it the test is skipped
# (exit 77). Every process it starts runs in a namespace it made; on exit, also
# on failure or SIGINT/SIGTERM, they are stopped and the namespaces (with their
# veths, bridge and addresses) deleted. Every wait is bounded (at most about
# 8 minutes in all). Prints PASS, FAIL or SKIP. GRADACC_MH_KEEP=1 keeps the
# temporary folder with the logs and parameter files.
set -uo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 PATH/TO/gradacc-server PATH/TO/gradacc-worker" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
server_bin="$(realpath "$1")"
worker_bin="$(realpath "$2")"
agent="$here/ns-agent.sh"
data_dir="${GRADACC_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
mpirun_bin="$(command -v mpirun || true)"
start_time=$SECONDS

say() { echo "multihost: $*"; }

for f in "$server_bin" "$worker_bin" "$agent"; do
  [[ -x "$f" ]] || { say "FAIL: not an executable: $f"; exit 1; }
done
[[ -f "$data_dir/train-images-idx3-ubyte.gz" ]] || { say "FAIL: no Fashion-MNIST in $data_dir"; exit 1; }
[[ -n "$mpirun_bin" ]] || { say "SKIP: mpirun not found"; exit 77; }
for tool in ip unshare hostname; do
  command -v "$tool" >/dev/null || { say "SKIP: $tool not found"; exit 77; }
done
[[ "$(id -u)" == 0 ]] || { say "SKIP: needs root for network namespaces"; exit 77; }

tmp="$(mktemp -d /tmp/gradacc-mh.XXXXXX)"
pfx="gradacc-mh-$$"
ns_br="$pfx-br" ns_srv="$pfx-srv" ns_srv2="$pfx-srv2" ns_a="$pfx-a" ns_b="$pfx-b" ns_one="$pfx-one"
made_ns=()   # namespaces this run created
result=fail  # or pass, skip

# Stops processes: SIGTERM, up to 5 s of grace, then SIGKILL.
stop_pids() {
  local p alive=() any
  for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  [[ ${#alive[@]} -eq 0 ]] && return 0
  kill -TERM "${alive[@]}" 2>/dev/null
  for _ in $(seq 50); do
    any=0
    for p in "${alive[@]}"; do kill -0 "$p" 2>/dev/null && any=1; done
    [[ $any == 0 ]] && return 0
    sleep 0.1
  done
  kill -KILL "${alive[@]}" 2>/dev/null
  return 0
}

show_logs() {
  local f
  for f in "$tmp"/*.log; do
    [[ -f "$f" ]] || continue
    echo "----- $(basename "$f") (last 40 lines) -----"
    tail -n 40 "$f"
  done
}

cleanup() {
  local rc=$? ns in_ns
  trap - EXIT INT TERM
  [[ $result == fail ]] && show_logs
  # Every process this run started (servers, timeout, mpirun, orted, ranks)
  # runs in one of its namespaces.
  for ns in "${made_ns[@]}"; do
    mapfile -t in_ns < <(ip netns pids "$ns" 2>/dev/null)
    [[ ${#in_ns[@]} -gt 0 ]] && stop_pids "${in_ns[@]}"
  done
  # Deleting a namespace destroys the veths, the bridge and the addresses in it.
  for ns in "${made_ns[@]}"; do
    ip netns delete "$ns" 2>/dev/null || say "warning: could not delete netns $ns"
  done
  wait 2>/dev/null
  # Open MPI's session folders of our hosts (named after their hostnames,
  # which are our namespace names); normally already gone.
  rm -rf "${TMPDIR:-/tmp}/ompi.$pfx-"*
  if [[ -n "${GRADACC_MH_KEEP:-}" ]]; then say "kept $tmp"; else rm -rf "$tmp"; fi
  case $result in
    pass) say "PASS ($((SECONDS - start_time)) s)"; exit 0 ;;
    skip) exit 77 ;;
  esac
  say "FAIL ($((SECONDS - start_time)) s)"
  [[ $rc == 0 ]] && rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

fail() { say "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- hosts
net="10.231.$((RANDOM % 250 + 1))"
srv_ip="$net.1" a_ip="$net.2" b_ip="$net.3" srv2_ip="$net.4"
subnet="$net.0/24"

if ! ip netns add "$ns_br" 2>"$tmp/netns.err"; then
  say "SKIP: cannot create network namespaces: $(cat "$tmp/netns.err")"
  result=skip
  exit 77
fi
made_ns+=("$ns_br")
ip -n "$ns_br" link set lo up || fail "lo up in $ns_br"
ip -n "$ns_br" link add br0 type bridge || fail "cannot create a bridge"
ip -n "$ns_br" link set br0 up || fail "bridge up"
netem=0 shaped=0
for h in srv srv2 a b; do
  ns="$pfx-$h"
  case $h in srv) addr=$srv_ip ;; srv2) addr=$srv2_ip ;; a) addr=$a_ip ;; b) addr=$b_ip ;; esac
  ip netns add "$ns" || fail "cannot create netns $ns"
  made_ns+=("$ns")
  ip -n "$ns" link set lo up || fail "lo up in $ns"
  # The bridge end lives in the br namespace, the host end is the host's eth0.
  ip -n "$ns_br" link add "v-$h" type veth peer name eth0 netns "$ns" || fail "cannot create a veth for $h"
  ip -n "$ns_br" link set "v-$h" master br0 || fail "cannot attach v-$h to the bridge"
  ip -n "$ns_br" link set "v-$h" up || fail "v-$h up"
  ip -n "$ns" addr add "$addr/24" dev eth0 || fail "address $addr in $ns"
  ip -n "$ns" link set eth0 up || fail "eth0 up in $ns"
  # A little latency makes the links more like a network (where the kernel
  # has sch_netem; many VM kernels do not).
  if ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: netem delay 1ms 2>/dev/null; then netem=1; fi
  # A real link's rate, both ways (host -> bridge under the netem delay when
  # there is one; bridge -> host on the bridge's port).
  if command -v tc >/dev/null; then
    if [[ $netem == 1 ]]; then
      ip netns exec "$ns" tc qdisc add dev eth0 parent 1: handle 2: tbf rate 200mbit burst 256kb latency 100ms \
        2>/dev/null && shaped=1
    else
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate 200mbit burst 256kb latency 100ms 2>/dev/null &&
        shaped=1
    fi
    ip netns exec "$ns_br" tc qdisc add dev "v-$h" root tbf rate 200mbit burst 256kb latency 100ms 2>/dev/null ||
      shaped=0
  fi
done
# The single host of the comparison run: loopback only.
ip netns add "$ns_one" || fail "cannot create netns $ns_one"
made_ns+=("$ns_one")
ip -n "$ns_one" link set lo up || fail "lo up in $ns_one"
say "hosts: srv=$srv_ip srv2=$srv2_ip a=$a_ip b=$b_ip on a bridge (netns $pfx-{srv,srv2,a,b,br}); one host:" \
    "netns $ns_one; 1ms delay: $([[ $netem == 1 ]] && echo on || echo 'not available in this kernel');" \
    "links 200 Mbit/s: $([[ $shaped == 1 ]] && echo shaped || echo 'not shaped (no tc tbf)')"

# Runs a command on a host: in its network namespace, under its own hostname
# (as ns-agent.sh does for a and b). Every step exec's the next, so $! of a
# backgrounded "${on_srv[@]}" CMD is CMD's pid.
# shellcheck disable=SC2016  # $0 and $@ are the inner shell's
on_srv=(ip netns exec "$ns_srv" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$ns_srv")
# shellcheck disable=SC2016
on_srv2=(ip netns exec "$ns_srv2" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$ns_srv2")
# shellcheck disable=SC2016
on_one=(ip netns exec "$ns_one" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$ns_one")

# ---------------------------------------------------------------- the job
cat >"$tmp/job.textproto" <<'EOF'
job_id: "multihost"
model {
  tensors { name: "fc1.weight" shape: [32, 784] init { fan_in_uniform { fan_in: 784 } } }
  tensors { name: "fc1.bias" shape: [32] init { fan_in_uniform { fan_in: 784 } } }
  tensors { name: "fc2.weight" shape: [10, 32] init { fan_in_uniform { fan_in: 32 } } }
  tensors { name: "fc2.bias" shape: [10] init { fan_in_uniform { fan_in: 32 } } }
}
optimizer { kind: KIND_ADAM lr: 0.003 }
window { num_workers: 4 micro_batches: 2 micro_batch_size: 20 }
total_steps: 20
seed: 9
worker_hints { key: "model" value: "mlp" }
worker_hints { key: "hidden" value: "32" }
EOF
worker_args=(--train_limit=2000 --steps=20 --log_every=5 --data_dir="$data_dir" --connect_timeout_s=30
             --window_timeout_s=120)

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export GRADACC_MH_HOSTS="$a_ip=$ns_a $b_ip=$ns_b"
export GRADACC_MH_AGENT_LOG="$tmp/agent.log"
# Across hosts: start the remote daemons through the agent (instead of ssh),
# use only the veth subnet for Open MPI's own wire-up (oob) and for MPI
# messages, and only TCP between ranks: the namespace hosts share /dev/shm,
# which real hosts never do.
mpi_multihost=(--host "$a_ip:2,$b_ip:2" --oversubscribe
               --mca plm_rsh_agent "$agent"
               --mca oob_tcp_if_include "$subnet"
               --mca btl "self,tcp"
               --mca btl_tcp_if_include "$subnet"
               -x OPENBLAS_NUM_THREADS=1)

# Waits (bounded) for a file to appear while a process stays alive.
wait_file() {  # FILE SECONDS PID
  for _ in $(seq $(($2 * 10))); do
    [[ -s "$1" ]] && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Stops a server gracefully (bounded) and checks that it exited 0.
stop_server() {  # PID NAME
  local rc
  kill -TERM "$1" 2>/dev/null
  for _ in $(seq 200); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$1" 2>/dev/null && fail "$2 did not stop within 20 s of SIGTERM"
  wait "$1"
  rc=$?
  [[ $rc == 0 ]] || fail "$2 exited $rc"
}

# Runs a command in the background and waits for it, so that SIGINT/SIGTERM
# reach our trap at once rather than when the command ends. The command must
# bound itself (timeout).
run_waiting() {  # LOG COMMAND...
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  wait $!
}

# ------------------------------------------- 1. where do the ranks run?
t0=$SECONDS
# shellcheck disable=SC2016  # expanded by the ranks' shell
run_waiting "$tmp/probe.log" "${on_srv[@]}" timeout -k 5 60 "$mpirun_bin" -np 4 "${mpi_multihost[@]}" \
    /bin/sh -c 'echo "rank $OMPI_COMM_WORLD_RANK $(ip -4 -o addr show dev eth0 | awk "{print \$4}") $(hostname)"' \
  || fail "mpirun could not start ranks on the namespace hosts"
for r in 0 1; do grep -q "^rank $r $a_ip/24 $ns_a$" "$tmp/probe.log" || fail "rank $r is not on host a"; done
for r in 2 3; do grep -q "^rank $r $b_ip/24 $ns_b$" "$tmp/probe.log" || fail "rank $r is not on host b"; done
say "ranks 0,1 run on a ($a_ip), ranks 2,3 on b ($b_ip) ($((SECONDS - t0)) s)"

# ------------------------------------------- 2. the job across hosts
t0=$SECONDS
"${on_srv[@]}" "$server_bin" --job="$tmp/job.textproto" --listen="$srv_ip:0" \
    --port_file="$tmp/mh.port" --allow_remote_plaintext --output="$tmp/multihost.safetensors" \
    >"$tmp/server-multihost.log" 2>&1 &
mh_server=$!
wait_file "$tmp/mh.port" 30 "$mh_server" || fail "the server on srv did not start"
mh_addr="$srv_ip:$(cat "$tmp/mh.port")"
say "server on $mh_addr (srv)"
# The namespaces share this machine's /dev/shm; real hosts do not: gRPC.
run_waiting "$tmp/mpirun-multihost.log" "${on_srv[@]}" timeout -k 10 120 "$mpirun_bin" -np 4 "${mpi_multihost[@]}" \
    "$worker_bin" --server="$mh_addr" --shared_memory=false "${worker_args[@]}"
rc=$?
sed 's/^/  | /' "$tmp/mpirun-multihost.log" | grep -E 'step|accuracy' || true
[[ $rc == 0 ]] || fail "mpirun across hosts exited $rc"
wait_file "$tmp/multihost.safetensors" 30 "$mh_server" || fail "no final parameters from the server on srv"
stop_server "$mh_server" "the server on srv"
if ! grep -q "^host $a_ip -> netns $ns_a:" "$tmp/agent.log" || ! grep -q "^host $b_ip -> netns $ns_b:" "$tmp/agent.log"; then
  fail "the agent did not launch on both hosts"
fi
say "across hosts: done ($((SECONDS - t0)) s)"

# ------------------------------------------- 2b. hierarchical across hosts
# One leader per host (ranks 0 and 2) pushes its host's sum; the server sees
# two pushes a window and counts four contributions.
t0=$SECONDS
"${on_srv[@]}" "$server_bin" --job="$tmp/job.textproto" --listen="$srv_ip:0" \
    --port_file="$tmp/hier.port" --allow_remote_plaintext --output="$tmp/hier.safetensors" \
    --ledger_file="$tmp/hier-ledger.jsonl" >"$tmp/server-hier.log" 2>&1 &
hier_server=$!
wait_file "$tmp/hier.port" 30 "$hier_server" || fail "the hierarchical server on srv did not start"
run_waiting "$tmp/mpirun-hier.log" "${on_srv[@]}" timeout -k 10 120 "$mpirun_bin" -np 4 "${mpi_multihost[@]}" \
    "$worker_bin" --server="$srv_ip:$(cat "$tmp/hier.port")" --shared_memory=false --hierarchical "${worker_args[@]}"
rc=$?
[[ $rc == 0 ]] || fail "hierarchical mpirun across hosts exited $rc"
grep -q "group of 2 ranks" "$tmp/mpirun-hier.log" || fail "rank 0 did not lead a group of 2 ranks"
wait_file "$tmp/hier.safetensors" 30 "$hier_server" || fail "no final parameters from the hierarchical server"
stop_server "$hier_server" "the hierarchical server"
# Every window: only the pushes of leaders 0 and 2 carry samples.
/usr/bin/python3 - "$tmp/hier-ledger.jsonl" <<'EOF' || fail "the ledger does not show one push per host"
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1])]
ok, carried = len(steps) == 20, []
for s in steps:
    carried = sorted(c.get("worker", 0) for c in s["contributions"] if int(c.get("samples", 0)) > 0)
    ok &= carried == [0, 2] and len(s["contributions"]) == 4
print(f"  {len(steps)} steps; workers whose pushes carry samples: {carried}")
sys.exit(0 if ok else 1)
EOF
say "hierarchical across hosts: done ($((SECONDS - t0)) s)"

# ------------------------------------------- 2c. sharded, shards on two hosts
# Four shards interleaved over srv (0, 2) and srv2 (1, 3), one gradacc-server
# per host serving both of its shards on one port; every worker pushes each
# shard its part over its own shaped link (one connection per server host)
# and pulls each as soon as it is pushed.
t0=$SECONDS
ports=()
for h in srv srv2; do
  addr=$srv_ip
  [[ $h == srv2 ]] && addr=$srv2_ip
  port=$(ip netns exec "$pfx-$h" /usr/bin/python3 -c \
    'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$addr") ||
    fail "no free port on $h"
  ports+=("$port")
done
peers="$srv_ip:${ports[0]},$srv2_ip:${ports[1]},$srv_ip:${ports[0]},$srv2_ip:${ports[1]}"
shard_pids=()
for h in 0 1; do
  on=("${on_srv[@]}") listen="$srv_ip:${ports[0]}"
  [[ $h == 1 ]] && on=("${on_srv2[@]}") listen="$srv2_ip:${ports[1]}"
  "${on[@]}" "$server_bin" --job="$tmp/job.textproto" --listen="$listen" --num_shards=4 --shard="$h,$((h + 2))" \
      --shard_peers="$peers" --port_file="$tmp/shards$h.port" --allow_remote_plaintext --shared_memory_dir= \
      --output="$tmp/shards.safetensors" >"$tmp/server-shards$h.log" 2>&1 &
  shard_pids+=($!)
done
wait_file "$tmp/shards0.port" 30 "${shard_pids[0]}" || fail "shards 0 and 2 on srv did not start"
wait_file "$tmp/shards1.port" 30 "${shard_pids[1]}" || fail "shards 1 and 3 on srv2 did not start"
run_waiting "$tmp/mpirun-sharded.log" "${on_srv[@]}" timeout -k 10 120 "$mpirun_bin" -np 4 "${mpi_multihost[@]}" \
    "$worker_bin" --server="$peers" --shared_memory=false "${worker_args[@]}"
rc=$?
[[ $rc == 0 ]] || fail "mpirun with the shards on two hosts exited $rc"
for i in 0 1 2 3; do
  wait_file "$tmp/shards.safetensors.shard-$i" 30 "${shard_pids[$((i % 2))]}" || fail "no final parameters from shard $i"
done
for h in 0 1; do stop_server "${shard_pids[$h]}" "the server of shards $h and $((h + 2))"; done
say "sharded over srv and srv2: done ($((SECONDS - t0)) s)"

# ------------------------------------------- 3. the same job on one host
t0=$SECONDS
"${on_one[@]}" "$server_bin" --job="$tmp/job.textproto" --listen=127.0.0.1:0 --port_file="$tmp/one.port" \
    --output="$tmp/one-host.safetensors" >"$tmp/server-one-host.log" 2>&1 &
one_server=$!
wait_file "$tmp/one.port" 30 "$one_server" || fail "the one-host server did not start"
run_waiting "$tmp/mpirun-one-host.log" "${on_one[@]}" timeout -k 10 120 "$mpirun_bin" -np 4 --oversubscribe \
    -x OPENBLAS_NUM_THREADS=1 "$worker_bin" --server="127.0.0.1:$(cat "$tmp/one.port")" "${worker_args[@]}"
rc=$?
[[ $rc == 0 ]] || fail "mpirun on one host exited $rc"
wait_file "$tmp/one-host.safetensors" 30 "$one_server" || fail "no final parameters from the one-host server"
stop_server "$one_server" "the one-host server"
say "one host: done ($((SECONDS - t0)) s)"

# ------------------------------------------- 4. identical parameters
/usr/bin/python3 - "$tmp/multihost.safetensors" "$tmp/one-host.safetensors" <<'EOF' || fail "the parameters differ"
import json, struct, sys

def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    return meta, {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
                  for k, v in header.items()}

(meta_m, m), (meta_o, o) = load(sys.argv[1]), load(sys.argv[2])
ok = True
if meta_m.get("step") != "20" or meta_o.get("step") != "20":
    print(f"final step: across hosts {meta_m.get('step')}, one host {meta_o.get('step')} (want 20)")
    ok = False
if sorted(m) != sorted(o):
    print(f"tensor names differ: {sorted(m)} vs {sorted(o)}")
    ok = False
for name in sorted(set(m) & set(o)):
    (dm, sm, xm), (do, so, xo) = m[name], o[name]
    if (dm, sm) != (do, so):
        print(f"{name}: {dm}{sm} across hosts, {do}{so} on one host")
        ok = False
    elif xm != xo:
        fm = struct.unpack(f"<{len(xm) // 4}f", xm)
        fo = struct.unpack(f"<{len(xo) // 4}f", xo)
        diff = [i for i in range(len(fm)) if xm[4 * i:4 * i + 4] != xo[4 * i:4 * i + 4]]
        worst = max(abs(fm[i] - fo[i]) for i in diff)
        print(f"{name}: {len(diff)} of {len(fm)} values differ, max |diff| {worst:g}")
        ok = False
    else:
        print(f"  {name} {dm}{sm}: identical")
sys.exit(0 if ok else 1)
EOF
cmp "$tmp/multihost.safetensors" "$tmp/one-host.safetensors" || fail "the files differ (outside the tensors)"
say "final parameters are bit-identical across hosts and on one host"
# The shards' parts, in shard order, are the one-host run's tensors in order.
/usr/bin/python3 - "$tmp/one-host.safetensors" "$tmp"/shards.safetensors.shard-{0,1,2,3} <<'EOF' ||
import json, struct, sys
def load(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n]); header.pop("__metadata__", None)
    return {k: raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items()}
one = load(sys.argv[1])
flat = b"".join(one[k] for k in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
parts = b"".join(load(p)["shard_params"] for p in sys.argv[2:])
print(f"  shards' parts: {len(parts) // 4} values; one host: {len(flat) // 4}")
sys.exit(0 if parts == flat else 1)
EOF
  fail "the shards' parameters differ from the one-host run's"
say "the four shards' parts are bit-identical to the one-host parameters"

# Hierarchical across hosts adds (g0+g1) + (g2+g3): same job, other rounding.
/usr/bin/python3 - "$tmp/hier.safetensors" "$tmp/one-host.safetensors" <<'EOF' || fail "hierarchical differs too much"
import json, math, struct, sys
def tensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n]); header.pop("__metadata__", None)
    return {k: struct.unpack(f"<{(v['data_offsets'][1] - v['data_offsets'][0]) // 4}f",
                             raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in header.items()}
h, o = tensors(sys.argv[1]), tensors(sys.argv[2])
worst = max(math.sqrt(sum((a - b) ** 2 for a, b in zip(h[k], o[k])) / max(1e-30, sum(b * b for b in o[k]))) for k in o)
print(f"  hierarchical across hosts vs one host: largest per-tensor relative difference {worst:.3g}")
sys.exit(0 if worst < 1e-4 else 1)
EOF
result=pass
