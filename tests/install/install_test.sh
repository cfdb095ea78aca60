#!/usr/bin/env bash
# The installed package works for a project outside the source tree: builds
# tests/install/consumer (a worker that uses only find_package(gradacc) and
# gradacc::client) against an installed gradacc and trains a job with it on a
# gradacc-server started on port 0.
#   tests/install/install_test.sh --build-dir DIR   cmake --install DIR into a
#                                 temporary prefix first, and use that (ctest
#                                 install_find_package, label install)
#   tests/install/install_test.sh --prefix PREFIX   gradacc already installed
#                                 there (the container tier: the .deb packages
#                                 in /usr)
# The consumer is copied to a temporary folder and configured with
# CMAKE_PREFIX_PATH=PREFIX only. Two workers train the 5-parameter job for
# 200 windows (one over gRPC, one over shared memory) and check the final
# parameters. Every wait is bounded; the server is stopped on any exit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

build_dir=""
prefix=""
case "${1:-}" in
  --build-dir) build_dir="$(realpath "$2")" ;;
  --prefix) prefix="$(realpath "$2")" ;;
  *) echo "usage: $0 --build-dir DIR | --prefix PREFIX" >&2; exit 2 ;;
esac

work="$(mktemp -d /tmp/gradacc-install-test.XXXXXX)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
say() { echo "install-test: $*"; }
die() { echo "install-test: FAIL: $*" >&2; exit 1; }

if [[ -n "$build_dir" ]]; then
  prefix="$work/prefix"
  timeout 300 cmake --install "$build_dir" --prefix "$prefix" >"$work/install.log" \
    || { tail -n 20 "$work/install.log"; die "cmake --install $build_dir failed"; }
  say "installed $build_dir into $prefix ($(wc -l <"$work/install.log") lines of cmake --install)"
fi
for f in bin/gradacc-server bin/gradacc bin/gradacc-worker include/gradacc/worker/client/client.h; do
  [[ -e "$prefix/$f" ]] || die "$prefix/$f is missing"
done
# Headers: only include/gradacc/, and there only what the client's public
# headers include (every quoted include of an installed header is installed;
# internals such as the HTTP server, the kernels or the client's stubs are not).
if [[ -n "$build_dir" ]]; then
  outside=$(find "$prefix/include" -name '*.h' -not -path "$prefix/include/gradacc/*" | head -5)
  [[ -z "$outside" ]] || die "headers outside include/gradacc: $outside"
  while IFS= read -r h; do
    while IFS= read -r inc; do
      [[ -e "$prefix/include/gradacc/$inc" ]] || [[ "$inc" != common/* && "$inc" != worker/* && "$inc" != server/* ]] \
        || die "${h#"$prefix"/} includes $inc, which is not installed"
    done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$h")
  done < <(find "$prefix/include/gradacc" -name '*.h' -not -name '*.pb.h')
  for f in common/http_server.h common/kernels.h worker/client/stubs.h worker/client/call_group.h server; do
    [[ ! -e "$prefix/include/gradacc/$f" ]] || die "include/gradacc/$f is installed: it is not part of the client's API"
  done
  say "headers: $(find "$prefix/include/gradacc" -name '*.h' -not -name '*.pb.h' | wc -l) of ours (the client's and what they include), the generated messages"
fi

# The consumer, outside the source tree; only the install prefix is known.
cp -r "$here/consumer" "$work/consumer"
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
timeout 300 cmake -S "$work/consumer" -B "$work/consumer-build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON >"$work/configure.log" 2>&1 \
  || { cat "$work/configure.log"; die "the consumer's cmake configure failed"; }
grep -q "^gradacc_DIR:PATH=$prefix/" "$work/consumer-build/CMakeCache.txt" \
  || die "find_package(gradacc) did not find the package under $prefix: $(grep ^gradacc_DIR "$work/consumer-build/CMakeCache.txt")"
timeout 600 cmake --build "$work/consumer-build" >"$work/build.log" 2>&1 \
  || { tail -n 40 "$work/build.log"; die "the consumer did not build"; }
say "built the consumer with find_package(gradacc): $(grep ^gradacc_DIR "$work/consumer-build/CMakeCache.txt")"

cat >"$work/job.textproto" <<'EOF'
job_id: "install-test"
model {
  tensors { name: "w" shape: [4] init { zeros: true } }
  tensors { name: "b" shape: [1] init { zeros: true } }
}
optimizer { kind: KIND_SGD lr: 0.5 }
window { num_workers: 2 micro_batches: 2 micro_batch_size: 16 }
reduction: REDUCTION_MEAN_OVER_SAMPLES
total_steps: 200
EOF
"$prefix/bin/gradacc-server" --listen=127.0.0.1:0 --port_file="$work/port" --job="$work/job.textproto" \
  >"$work/server.log" 2>&1 &
server_pid=$!
for ((i = 0; i < 300; i++)); do
  [[ -s "$work/port" ]] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; die "gradacc-server exited before serving"; }
  sleep 0.1
done
[[ -s "$work/port" ]] || { cat "$work/server.log"; die "gradacc-server wrote no port file within 30 s"; }
addr="127.0.0.1:$(cat "$work/port")"
say "$prefix/bin/gradacc-server serves on $addr"

worker_pids=()
timeout 120 "$work/consumer-build/linear_worker" "$addr" 0 2 shm >"$work/worker0.log" 2>&1 &
worker_pids+=($!)
timeout 120 "$work/consumer-build/linear_worker" "$addr" 1 2 grpc >"$work/worker1.log" 2>&1 &
worker_pids+=($!)
failed=0
for k in 0 1; do
  if ! wait "${worker_pids[$k]}"; then failed=1; fi
  cat "$work/worker$k.log"
done
if ((failed)); then
  tail -n 20 "$work/server.log"
  die "a worker failed"
fi
timeout 30 "$prefix/bin/gradacc" status --server="$addr" >"$work/status.txt" || die "gradacc status failed"
head -n 2 "$work/status.txt"
grep -q "200 / 200" "$work/status.txt" || die "the server is not at step 200 / 200"

# The Python package, when it was installed (component python, python3-gradacc):
# /usr/bin/python3 imports it from the prefix (Debian's dist-packages path when
# the prefix is /usr), outside the source tree, and its client reads the
# finished job from the installed server.
python_dir="$prefix/lib/python3/dist-packages"
if [[ -e "$python_dir/gradacc/__init__.py" ]]; then
  (cd "$work" && PYTHONPATH="$python_dir" timeout 60 /usr/bin/python3 - "$addr" "$python_dir" <<'PY') \
    || die "the installed Python package failed"
import sys
import gradacc
import gradacc.torch  # noqa: F401
assert gradacc.__file__.startswith(sys.argv[2]), gradacc.__file__
client = gradacc.connect(sys.argv[1], 0, connect_timeout_s=20)
status = client.status()
assert client.done and int(status["step"]) == 200, status
client.close()
print(f"install-test: the installed Python package ({gradacc.__file__}) reads the finished job, step {status['step']}")
PY
fi
say "PASS: a find_package(gradacc) worker trained the job against the installed gradacc-server"
