#!/usr/bin/env bash
# Runs hgpt's GPU tests on the emulated device: tools/cuda_emu/device/ builds stand-ins
# for the NVIDIA driver (libcuda.cpp: the real cuda/*.cu kernels on the CPU emulator,
# device memory in guarded host mappings), cuBLASLt (cublaslt.cpp: a reference
# implementation from NVIDIA's documentation) and NCCL (nccl.cpp: ranks as processes on
# this machine, meeting in POSIX shared memory; HGPT_EMU_DEVICES=n gives it n devices), and
# the GPU parity tests run the whole CUDA backend against them, through cudarc as on a GPU,
# then the command line, data parallel across 2 ranks included. It checks the host side (the
# launchers' grids, shared memory and arguments, buffer sizes, bf16 buffers, scratch,
# the memory plan, the op order, the collectives' arguments) and the kernels' logic; not the
# hardware, its timing, the real cuBLASLt or NCCL's transports and summation order
# (tools/gpu_check.sh on a GPU does that). CI runs it.
#
#   tools/emulated_device.sh [TEST FILTER ...]   (default: every emulated test)
#   tools/emulated_device.sh --build-only        (only the libraries, for
#       tools/gpu_preflight.sh's run of tools/gpu_check.sh on them)
#
# Needs NVRTC (the kernels are still compiled, to check they would load) as for
# `cargo test --test cuda_compile`; exits non-zero if a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/cuda_emu/device
mkdir -p "$out"
# The kernel table: every family and every kernel in cuda/*.cu, as the Rust side finds them.
for f in cuda/*.cu; do echo "#include \"$PWD/$f\""; done >"$out/families.inc"
grep -ho '__global__ void [a-z0-9_]*' cuda/*.cu | awk '{print "KERNEL(" $3 ")"}' >"$out/kernels.inc"

flags=(-std=c++17 -O2 -g -fPIC -shared -Wall -Wextra -Wno-unknown-pragmas -Wno-sign-compare
       -fno-strict-aliasing -U_FORTIFY_SOURCE)
# The driver exports only its API: the kernels' names and shared-memory aliases stay inside.
# Its alignment sanitizer stops at a float4 or bf16-pair access a GPU would fault on
# ("misaligned address"), naming the kernel's line.
# Built beside and renamed into place: a process still running on the old library keeps
# its file (writing over a mapped library would change code under it).
g++ "${flags[@]}" -fvisibility=hidden -fsanitize=alignment -fno-sanitize-recover=alignment \
    -I tools/cuda_emu/include -I tools/cuda_emu -I "$out" \
    -o "$out/libcuda.so.1.new" tools/cuda_emu/device/libcuda.cpp -lpthread &
g++ "${flags[@]}" -o "$out/libcublasLt.so.13.new" tools/cuda_emu/device/cublaslt.cpp &
# NCCL exports only its API too.
g++ "${flags[@]}" -fvisibility=hidden -o "$out/libnccl.so.2.new" tools/cuda_emu/device/nccl.cpp &
wait %1 && wait %2 && wait %3
mv -f "$out/libcuda.so.1.new" "$out/libcuda.so.1"
mv -f "$out/libcublasLt.so.13.new" "$out/libcublasLt.so.13"
mv -f "$out/libnccl.so.2.new" "$out/libnccl.so.2"
ln -sf libcuda.so.1 "$out/libcuda.so"
ln -sf libcublasLt.so.13 "$out/libcublasLt.so"
ln -sf libnccl.so.2 "$out/libnccl.so"
[ "${1:-}" = --build-only ] && exit 0

# The emulated libraries come first; NVRTC is found as hgpt finds it.
export LD_LIBRARY_PATH="$PWD/$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Sized for a GPU, these take minutes each here; `--all` runs them too.
skip=()
if [ "${1:-}" = "--all" ]; then
    shift
else
    skip+=(--skip fifty_training_steps --skip two_runs_of_twenty_steps --skip at_gpt2_shapes)
fi
echo "emulated device: the GPU parity tests (kernels on the CPU emulator, reference cuBLASLt)"
cargo test --release --test cuda_parity -- --include-ignored "${skip[@]}" "$@"
[ $# -eq 0 ] || exit 0

# The command line on the emulated device, as tools/gpu_check.sh's stage 0 runs it on a
# GPU: training in both precisions (fp32's losses equal the CPU's to 1e-4), an exact resume,
# generate from the checkpoint, and the LLC against the CPU's. (Not bench: its GEMM peak, five 4096^3 products, would
# take the reference cuBLASLt most of an hour.)
echo "emulated device: the command line"
bin=target/release/hgpt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
small=(--set train.batch_size=4 --set train.seq_len=64 --set data.builtin_train_bytes=300000
       --set data.builtin_val_bytes=20000 --set train.eval_every=0 --set train.log_every=1)
losses() { grep -o '"train_loss":[0-9.e+-]*' "$1/metrics.jsonl" | cut -d: -f2; }
# close_losses RUN_A NAME_A RUN_B NAME_B TOLERANCE STEPS: B's losses equal A's, step by step,
# to TOLERANCE relative, over STEPS logged steps.
close_losses() {
    paste <(losses "$1") <(losses "$3") | awk -v a="$2" -v b="$4" -v tol="$5" -v want="$6" '
        { n++; d = ($2 - $1) / $1; if (d < 0) d = -d; if (d > tol) bad = 1
          printf "step %d: loss %s %s, %s %s\n", n, a, $1, b, $2 }
        END { if (n != want || bad) { printf "%s losses differ from %s'"'"'s\n", b, a; exit 1 } }'
}
for precision in fp32 bf16; do
    "$bin" train --device cuda --steps 2 --out "$work/$precision" --set train.precision=$precision "${small[@]}"
done
"$bin" train --device cpu --steps 2 --out "$work/cpu" "${small[@]}"
close_losses "$work/cpu" cpu "$work/fp32" "emulated device fp32" 1e-4 2
# Resumed at step 2, the run goes on bit for bit as one that never stopped, though that
# one ran its blocks and threads in other orders (another seed).
"$bin" train --device cuda --resume "$work/bf16" --steps 3
HGPT_EMU_SEED=2 "$bin" train --device cuda --steps 3 --out "$work/bf16-straight" \
    --set train.precision=bf16 "${small[@]}"
[ "$(losses "$work/bf16")" = "$(losses "$work/bf16-straight")" ] ||
    { echo "the resumed bf16 run's losses differ from the straight run's"; exit 1; }
"$bin" generate --device cuda --checkpoint "$work/fp32" --prompt "The " --max-new-tokens 8 --seed 1
# The LLC's SGLD chain on the device against the CPU's, same draws (fp32: within 1e-3).
llc=(llc --checkpoint "$work/fp32" --epsilon 1e-4 --chains 1 --draws 2 --burnin 2 --json)
estimate() { grep -o '"estimate": *[0-9.e+-]*' "$1" | head -n1 | sed 's/.*: *//'; }
"$bin" "${llc[@]}" --device cpu --out "$work/llc-cpu" >"$work/llc-cpu.json"
"$bin" "${llc[@]}" --device cuda --out "$work/llc-cuda" >"$work/llc-cuda.json"
awk -v a="$(estimate "$work/llc-cpu.json")" -v b="$(estimate "$work/llc-cuda.json")" 'BEGIN {
    d = (b - a) / a; printf "llc: cpu %s, emulated device %s\n", a, b
    if (b == "" || d > 1e-3 || d < -1e-3) { print "the LLC estimates differ"; exit 1 } }'
# Data parallel through the emulated NCCL: 2 ranks on 2 emulated devices (one process each,
# as --ranks starts them, each seeing only its own) train like 1 rank on the same global
# batch (2 micro-batches), to 1e-6 as tests/data_parallel.rs has it on the CPU; then the
# 2-rank run resumes under a launcher's variables (each rank sees both devices and takes
# its LOCAL_RANK's), as the 1-rank run resumes.
dp=("${small[@]}" --set train.batch_size=2 --set train.precision=fp32)
HGPT_EMU_DEVICES=2 "$bin" train --device cuda --ranks 2 --steps 2 --out "$work/dp2" "${dp[@]}" |
    tee "$work/dp2.out"
# Every rank logs the same global step: only rank 0 prints it.
[ "$(grep -c '^step ' "$work/dp2.out")" -eq 2 ] || { echo "step lines printed by more than rank 0"; exit 1; }
"$bin" train --device cuda --steps 2 --out "$work/dp1" --set train.grad_accum=2 "${dp[@]}"
close_losses "$work/dp1" "1 rank" "$work/dp2" "2 ranks (NCCL)" 1e-6 2
pids=()
for rank in 0 1; do
    HGPT_EMU_DEVICES=2 RANK=$rank WORLD_SIZE=2 LOCAL_RANK=$rank LOCAL_WORLD_SIZE=2 \
        "$bin" train --device cuda --resume "$work/dp2" --steps 3 \
        --dist-init "file:$work/dp2-init" >"$work/dp2-rank$rank.log" 2>&1 &
    pids+=($!)
done
for rank in 0 1; do
    wait "${pids[$rank]}" || { cat "$work/dp2-rank$rank.log"; echo "rank $rank of the resume failed"; exit 1; }
done
"$bin" train --device cuda --resume "$work/dp1" --steps 3
close_losses "$work/dp1" "1 rank, resumed" "$work/dp2" "2 ranks, resumed" 1e-6 3
# GPT-2 124M does not fit a 2 GiB device: one line saying so, before anything is made.
if HGPT_EMU_MEMORY_MIB=2048 "$bin" train --device cuda --config configs/gpt2-124m-harmonic.toml \
        --out "$work/too-big" 2>"$work/too-big.err"; then
    echo "a run that cannot fit the device was not refused"; exit 1
fi
cat "$work/too-big.err"
[ "$(wc -l <"$work/too-big.err")" -eq 1 ] && grep -q "does not fit" "$work/too-big.err" &&
    [ ! -e "$work/too-big" ] || { echo "the refusal is not one line saying it does not fit"; exit 1; }
echo "emulated device: all checks passed"
