#!/usr/bin/env bash
# Downloads the Debian 12 packages a build on the lent GPU machine needs (it
# has CMake, ninja, nvcc, gcc and a CUDA PyTorch, but no gRPC, Protobuf,
# Abseil, Open MPI, OpenBLAS, civetweb, pybind11 or OpenSSL headers) into
# .gpu/debs (git-ignored; ~38 MiB, inside the 64 MiB a device run may carry).
# Then: the device run carries .gpu and runs tests/gpu/run.sh --debs .gpu/debs.
# Rehearse here: tests/gpu/run.sh --debs .gpu/debs --rehearse.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$root/.gpu/debs"
mkdir -p "$out"
cd "$out"
packages=(
  libgrpc++-dev libgrpc++1.51 libgrpc-dev libgrpc29 libprotobuf-dev libprotobuf32 libprotoc32
  protobuf-compiler protobuf-compiler-grpc libabsl-dev libabsl20220623 libre2-dev libre2-9
  libc-ares-dev libc-ares2 pybind11-dev
  libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libpmix2 libhwloc15 libevent-2.1-7
  libevent-pthreads-2.1-7 libevent-core-2.1-7 libfabric1 libucx0 libpsm2-2 libibverbs1 librdmacm1
  libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libxnvctrl0 libnuma1
  libopenblas-dev libopenblas0-pthread libopenblas-pthread-dev libopenblas0 libgfortran5
  libcivetweb-dev libcivetweb1 zlib1g-dev libssl-dev libssl3
)
for p in "${packages[@]}"; do
  ls "$p"_*.deb >/dev/null 2>&1 || apt-get download -q "$p" >/dev/null
done
echo "gpu: $(ls *.deb | wc -l) packages, $(du -sh . | cut -f1) in $out"
