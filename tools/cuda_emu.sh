#!/usr/bin/env bash
# Checks the logic of CUDA kernels on a machine with no GPU: each harness in
# tools/cuda_emu/ compiles the real cuda/*.cu files with g++ against the CPU emulator
# (tools/cuda_emu/emu.h says how it works and what it cannot see), runs the kernels in
# several thread orders (and the gradient sums in several block orders, which must give
# the same bits), and compares them with an f64 reference; cublaslt.cpp checks the
# emulated device's reference cuBLASLt (tools/cuda_emu/device/cublaslt.cpp) the same way,
# and nccl.cpp its NCCL (device/nccl.cpp) with forked ranks.
# One line per check; exits non-zero if any check fails (or a harness does not build).
# About 30 s on two cores; CI runs it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

build=target/cuda_emu
mkdir -p "$build"
# Build every harness first, two at a time (the builds are most of the wall time).
# -fno-strict-aliasing: the kernels reinterpret bf16 pairs as words, as CUDA allows.
# -U_FORTIFY_SOURCE: its checked longjmp refuses to switch between thread stacks.
# -Wno-sign-compare: NVRTC does not warn of int == unsigned (head.cu compares i == y).
printf '%s\n' tools/cuda_emu/*.cpp | xargs -P 2 -I {} sh -c \
    'g++ -std=c++17 -O2 -Wall -Wextra -Wno-unknown-pragmas -Wno-sign-compare \
        -fno-strict-aliasing -U_FORTIFY_SOURCE -I tools/cuda_emu/include \
        -o "$1/$(basename "$2" .cpp)" "$2"' build "$build" {}
status=0
for harness in tools/cuda_emu/*.cpp; do
    "$build/$(basename "$harness" .cpp)" || status=1
done
if [ "$status" -ne 0 ]; then
    echo "cuda_emu: some checks FAILED" >&2
fi
exit "$status"
