#!/usr/bin/env bash
# Builds the push-path fuzz target with clang (libFuzzer + ASan + UBSan) in
# its own build folder and runs it for a bounded time, starting from the
# corpus kept in tests/fuzz/corpus. Exits non-zero on any crash, leak or
# sanitizer report.
#   tests/fuzz/run_fuzz.sh [seconds]          (default 60)
# GRADACC_FUZZ_MERGE=1 also merges what it found into tests/fuzz/corpus.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
seconds="${1:-60}"
build="${GRADACC_FUZZ_BUILD_DIR:-$root/build-fuzz}"
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGRADACC_FUZZ=ON -DGRADACC_BUILD_TESTS=OFF -DGRADACC_WERROR=OFF -DGRADACC_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" >/dev/null
cmake --build "$build" --target push_fuzzer -j 2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus"
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd "$work"
"$build/tests/fuzz/push_fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
  -max_len=4096 -print_final_stats=1 "$work/corpus" "$root/tests/fuzz/corpus"
if [[ "${GRADACC_FUZZ_MERGE:-0}" == 1 ]]; then
  "$build/tests/fuzz/push_fuzzer" -merge=1 "$root/tests/fuzz/corpus" "$work/corpus"
fi
echo "fuzz: $seconds s without a crash, leak or sanitizer report"
