#!/usr/bin/env bash
# Installs the Debian 12 packages that gradacc's build, tests and main job need
# (clang and its sanitizer runtimes build the fuzz target of the fault tier;
# chromium renders the dashboard in the observe tier; dpkg-dev and file let
# cpack compute the .deb packages' dependencies with dpkg-shlibdeps).
# Idempotent: packages already present are skipped, and apt is not touched at
# all when nothing is missing. Usage: deploy/install-deps.sh [--golden]
#   --golden  also install python3-torch / python3-numpy (only needed to
#             regenerate golden test data; CI never needs them).
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  zlib1g-dev libopenblas-dev dataset-fashion-mnist
  python3 python3-grpcio
  procps iproute2 util-linux openssl
  clang libclang-rt-14-dev
  libcivetweb-dev chromium
  dpkg-dev file
)
# Node.js and npm run the offline deployment validation; machines that
# already have them (from elsewhere than Debian) keep theirs.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi
if [[ "${1:-}" == "--golden" ]]; then
  packages+=(python3-torch python3-numpy)
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
