#!/usr/bin/env bash
# Checks the logic of CUDA kernels on a machine with no GPU: each harness in
# tools/cuda_emu/ compiles the real cuda/*.cu files with g++ against the CPU emulator
# (tools/cuda_emu/emu.h says how it works and what it cannot see), runs the kernels in
# several thread orders, and compares them with an f64 reference. One line per check;
# exits non-zero if any check fails. Takes seconds; CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

build=target/cuda_emu
mkdir -p "$build"
status=0
for harness in tools/cuda_emu/*.cpp; do
    name=$(basename "$harness" .cpp)
    # -fno-strict-aliasing: the kernels reinterpret bf16 pairs as words, as CUDA allows.
    # -U_FORTIFY_SOURCE: its checked longjmp refuses to switch between thread stacks.
    g++ -std=c++17 -O2 -Wall -Wextra -Wno-unknown-pragmas -fno-strict-aliasing \
        -U_FORTIFY_SOURCE -I tools/cuda_emu/include -o "$build/$name" "$harness"
    "$build/$name" || status=1
done
if [ "$status" -ne 0 ]; then
    echo "cuda_emu: some checks FAILED" >&2
fi
exit "$status"
