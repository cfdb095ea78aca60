#!/usr/bin/env bash
# Installs the Debian 12 packages that gradacc's build, tests and main job need
# (clang and its sanitizer runtimes build the fuzz target of the fault tier;
# chromium renders the dashboard in the observe tier; dpkg-dev and file let
# cpack compute the .deb packages' dependencies with dpkg-shlibdeps;
# pybind11-dev and python3-dev build the Python package gradacc, and
# python3-torch and python3-numpy run it, its tests, the quickstart's --torch
# job and the golden-data generators; ccache lets tests/run.sh reuse what an
# earlier build compiled; python3-matplotlib draws the benchmarks' charts;
# grpc-proto is not needed: proto/grpc/ vendors it).
# Idempotent: packages already present are skipped, and apt is not touched at
# all when nothing is missing. Usage: deploy/install-deps.sh
# (--golden is accepted and changes nothing: torch is always installed now).
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  zlib1g-dev libopenblas-dev dataset-fashion-mnist
  python3 python3-grpcio
  python3-dev pybind11-dev python3-numpy python3-torch
  procps iproute2 util-linux openssl
  clang libclang-rt-14-dev
  libcivetweb-dev chromium
  dpkg-dev file
  ccache
  python3-matplotlib
)
# Node.js and npm run the offline deployment validation; machines that
# already have them (from elsewhere than Debian) keep theirs.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
