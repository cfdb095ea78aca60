#!/usr/bin/env bash
# The PyTorch 2 tier (tests/run.sh --torch2; .ci/run runs it): gradacc built
# on Debian 13 (trixie: python3-torch 2.6, Python 3.13, NumPy 2, pybind11
# 2.13, gcc 14, Open MPI 5) and the Python package's tests run there against
# PyTorch 2, beside the default tiers' Debian 12 PyTorch 1.13.
#
# Debian 13 is a root filesystem made with debootstrap from this machine's
# Debian mirror (deploy/debian-mirror.sh), with the build's and the tests'
# packages installed by apt inside it; it is cached in
# $GRADACC_CACHE_DIR/trixie-torch2 (default /var/cache/gradacc) and made
# again only when the package list below changes (first run ~3 minutes,
# 2.5 GB). The tier runs in a private mount and PID namespace (unshare) with
# the work tree bind-mounted at /src, chroot-ed into that filesystem: every
# mount and every process it starts (servers, mpirun ranks) goes when it
# ends, also when it is killed. Build folder: build-torch2/ in the work
# tree; ccache in $GRADACC_CACHE_DIR/trixie-ccache.
#
# It needs root (debootstrap, chroot, mount). Without root and without
# password-less sudo it prints "torch2: SKIPPED ..." and exits 0: the tier
# did not run, and says so; it never reports a pass it did not run.
#
# Usage: tests/torch2/run.sh [ctest arguments] (default: -L 'python|torch2',
# every Python test module and the PyTorch-2-only tests);
# tests/torch2/run.sh --exec CMD ARGS... runs one command in that Debian 13
# (after a build, e.g. --exec bash, with the work tree at /src).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

say() { echo "torch2: $*"; }
die() { echo "torch2: ERROR: $*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n --preserve-env=GRADACC_CACHE_DIR,GRADACC_DEBIAN_MIRROR "$root/tests/torch2/run.sh" "$@"
  fi
  say "SKIPPED: the PyTorch 2 tier needs root (debootstrap, chroot, mount) and this user has neither root nor" \
    "password-less sudo; it did not run"
  exit 0
fi

cache="${GRADACC_CACHE_DIR:-/var/cache/gradacc}"
rootfs="$cache/trixie-torch2"
ccache_dir="$cache/trixie-ccache"
# What the build and the Python tests need on Debian 13. Debian 13 has no
# grpc-proto package: proto/grpc/ vendors the two .proto files we use.
packages=(
  g++ cmake ninja-build pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libopenmpi-dev openmpi-bin libgtest-dev libgmock-dev libbenchmark-dev
  zlib1g-dev libopenblas-dev libssl-dev libcivetweb-dev
  python3 python3-dev pybind11-dev python3-numpy python3-torch procps dataset-fashion-mnist
)
stamp="trixie minbase; ${packages[*]}"

for tool in debootstrap unshare chroot; do
  if ! command -v "$tool" >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap debian-archive-keyring \
      util-linux coreutils >/dev/null
    break
  fi
done

# The tests' own settings (GRADACC_RESIDUAL_REPEATS, GRADACC_EQUIV_MODELS,
# ...) go in; the host's paths do not.
passed_env=()
while IFS= read -r name; do
  case "$name" in
    GRADACC_BUILD_DIR | GRADACC_CACHE_DIR | GRADACC_DEBIAN_MIRROR | GRADACC_*_BIN | GRADACC_PYTHON_DIR) ;;
    *) passed_env+=("$name=${!name}") ;;
  esac
done < <(compgen -e | grep '^GRADACC_' || true)

# Runs "$@" inside the root filesystem $1 with /proc, /dev, /dev/shm, /sys
# and the work tree at /src, in a private mount and PID namespace. The
# namespace's first process ignores SIGTERM (PID 1), so this script kills
# the namespace (unshare, whose --kill-child takes everything in it) when it
# ends or is stopped.
namespace_pid=""
end_namespace() {
  if [[ -n "$namespace_pid" ]]; then kill -9 "$namespace_pid" 2>/dev/null || true; fi
}
trap end_namespace EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
in_rootfs() {
  local fs="$1" rc=0
  shift
  mkdir -p "$fs/src" "$fs/ccache" "$ccache_dir"
  unshare --mount --pid --fork --kill-child --propagation private -- bash -euc '
    fs="$1"; src="$2"; cc="$3"; shift 3
    mount -t proc proc "$fs/proc"
    mount --rbind /dev "$fs/dev"
    mount -t tmpfs -o size=50%,mode=1777 tmpfs "$fs/dev/shm"
    mount --rbind /sys "$fs/sys"
    mount --bind "$src" "$fs/src"
    mount --bind "$cc" "$fs/ccache"
    exec chroot "$fs" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"
  ' in_rootfs "$fs" "$root" "$ccache_dir" "${passed_env[@]}" "$@" &
  namespace_pid=$!
  wait "$namespace_pid" || rc=$?
  namespace_pid=""
  return "$rc"
}

if [[ ! -f "$rootfs/.gradacc-stamp" || "$(cat "$rootfs/.gradacc-stamp")" != "$stamp" ]]; then
  mirror="$(deploy/debian-mirror.sh)"
  say "making the Debian 13 root filesystem $rootfs (debootstrap trixie from $mirror, then apt; a few minutes)"
  tmp="$rootfs.tmp"
  rm -rf "$tmp"
  mkdir -p "$cache"
  log="$cache/trixie-torch2.log"
  if ! timeout 1800 debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$log" 2>&1; then
    tail -n 30 "$log" "$tmp/debootstrap/debootstrap.log" 2>/dev/null || true
    rm -rf "$tmp"
    die "debootstrap trixie failed (log: $log)"
  fi
  cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
  if ! in_rootfs "$tmp" /bin/bash -c "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && \
      apt-get install -y -qq --no-install-recommends ${packages[*]} && apt-get clean" >>"$log" 2>&1; then
    tail -n 30 "$log"
    rm -rf "$tmp"
    die "apt-get install in the Debian 13 root filesystem failed (log: $log)"
  fi
  echo "$stamp" >"$tmp/.gradacc-stamp"
  rm -rf "$rootfs"
  mv "$tmp" "$rootfs"
  say "made $rootfs ($(du -sh --one-file-system "$rootfs" 2>/dev/null | cut -f1))"
fi

versions="$(in_rootfs "$rootfs" python3 -c 'import sys, torch, numpy; print("Python %d.%d.%d," % sys.version_info[:3], "torch", torch.__version__ + ",", "numpy", numpy.__version__)')"
say "Debian $(cat "$rootfs/etc/debian_version"): $versions"
if [[ "${1:-}" == --exec ]]; then
  shift
  exec_args=("$@")
  in_rootfs "$rootfs" /usr/bin/env PYTHONPATH=/src/build-torch2/python GRADACC_BUILD_DIR=/src/build-torch2 \
    "${exec_args[@]}"
  exit
fi
start=$(date +%s)
in_rootfs "$rootfs" /src/tests/torch2/inside.sh "$@"
say "passed in $(($(date +%s) - start)) s (build and tests)"
