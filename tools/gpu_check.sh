#!/usr/bin/env bash
# The GPU checks, in one command, on a machine with an NVIDIA GPU and the binaries from
# tools/build_devbin.sh in .devbin/ (no Rust needed there):
#   1. every kernel compiles through NVRTC for sm_80 and sm_90 (cuda_compile)
#   2. the CUDA/CPU parity suite (cuda_parity): every op, both heads' losses and
#      gradients, 50 training steps, h on a class centre, fp32 and bf16
#   3. GPT-2 124M (configs/gpt2-124m-harmonic.toml) trains a few steps, loss falling
#   4. hgpt bench --device cuda on the same model: tokens/s, MFU, peak memory beside
#      the memory plan's figure
#   5. hgpt llc through the CUDA backend: a tiny checkpoint's estimate against the
#      CPU's, and the time of a short estimate of the 124M checkpoint
# then prints a table. Logs go to $OUT (or .devbin/gpu-check). Exit status: failures.
# Usage: tools/gpu_check.sh [steps]   (training steps for check 3, default 30)
set -uo pipefail
cd "$(dirname "$0")/.."

BIN=${HGPT_DEVBIN:-.devbin}
LOGS=${OUT:-$BIN/gpu-check}
STEPS=${1:-30}
mkdir -p "$LOGS"

source tools/cuda_env.sh
export HGPT_CACHE=${HGPT_CACHE:-$BIN/kernel-cache}

echo "== CUDA libraries"
for lib in libcuda.so.1 libnvrtc.so.13 libcublasLt.so.13; do
    where=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l { print $NF; exit }')
    if [ -z "$where" ]; then
        IFS=: read -ra lp <<< "$LD_LIBRARY_PATH"
        for d in "${lp[@]}"; do [ -e "$d/$lib" ] && where="$d/$lib" && break; done
    fi
    echo "  $lib: ${where:-NOT FOUND}"
done
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

rows=()
failed=0
# check NAME DETAIL-COMMAND -- COMMAND...: runs COMMAND into $LOGS/NAME.log; a check
# passes when COMMAND exits 0 and its log says nothing was skipped.
check() {
    local name=$1; shift
    local log="$LOGS/$name.log" t0=$SECONDS status=PASS
    echo "== $name: $*"
    if ! "$@" >"$log" 2>&1; then status=FAIL; fi
    if grep -q "SKIPPED" "$log"; then status=FAIL; fi
    [ $status = FAIL ] && failed=$((failed + 1)) && tail -n 30 "$log"
    rows+=("$(printf '%-14s %-5s %6ss  %s' "$name" "$status" $((SECONDS - t0)) "${detail:-}")")
    detail=""
}

detail="sm_80 + sm_90"
check nvrtc "$BIN/tests/cuda_compile" --nocapture --test-threads=1

detail="fp32 < 1e-4, bf16 < 2e-2"
check parity "$BIN/tests/cuda_parity" --include-ignored --nocapture --test-threads=1

run_dir="$LOGS/train-124m"
rm -rf "$run_dir"
check train-124m "$BIN/hgpt" train --device cuda --config configs/gpt2-124m-harmonic.toml \
    --steps "$STEPS" --out "$run_dir" --set train.grad_accum=1 --set train.log_every=1 \
    --set train.warmup_steps=10 --set train.eval_every=0 --set train.eval_steps=2 \
    --set data.builtin_train_bytes=4000000 --set data.builtin_val_bytes=200000
if [ -f "$run_dir/metrics.jsonl" ]; then
    first=$(grep -m1 -o '"train_loss":[0-9.e+-]*' "$run_dir/metrics.jsonl" | cut -d: -f2)
    last=$(grep -o '"train_loss":[0-9.e+-]*' "$run_dir/metrics.jsonl" | tail -n1 | cut -d: -f2)
    falling=$(awk -v a="$first" -v b="$last" 'BEGIN { print (b < a) ? "yes" : "NO" }')
    tps=$(grep -o '"tokens_per_s":[0-9.e+-]*' "$run_dir/metrics.jsonl" | tail -n1 | cut -d: -f2)
    rows[-1]="${rows[-1]}loss $first -> $last (falling: $falling), $(printf '%.0f' "$tps") tok/s"
    if [ "$falling" != yes ]; then failed=$((failed + 1)); rows[-1]="${rows[-1]/PASS/FAIL}"; fi
fi

check bench-124m "$BIN/hgpt" bench --device cuda --config configs/gpt2-124m-harmonic.toml \
    --steps 5 --warmup 2 --json --set train.grad_accum=1 \
    --set data.builtin_train_bytes=4000000 --set data.builtin_val_bytes=200000
field() { grep -o "\"$1\": [0-9.e+-]*" "$LOGS/bench-124m.log" | head -n1 | awk '{ print $2 }'; }
if [ -n "$(field tokens_per_s)" ]; then
    rows[-1]="${rows[-1]}$(printf '%.0f tok/s, %.1f ms/step, MFU %.3f, peak %.0f MiB (planned %.0f), GEMM peak %.0f TFLOP/s' \
        "$(field tokens_per_s)" "$(field ms_per_step)" "$(field mfu)" "$(field peak_memory_mib)" \
        "$(field planned_memory_mib)" "$(field gemm_peak_tflops)")"
fi

# LLC through the CUDA backend (sgld_update on the device): on a tiny checkpoint the
# estimate must agree with the CPU's (same noise and batches; bf16 GEMMs, so within
# 10%, not bit for bit), then the time of a short estimate of the 124M checkpoint.
llc_run="$LOGS/llc-tiny"
rm -rf "$llc_run"
"$BIN/hgpt" train --device cpu --steps 50 --out "$llc_run" --set train.eval_every=0 \
    >"$LOGS/llc-tiny-train.log" 2>&1
llc_short() { "$BIN/hgpt" llc --checkpoint "$1" --device "$2" --chains 2 --draws 20 \
    --burnin 20 --json --out "$3"; }
check llc-tiny-cpu llc_short "$llc_run" cpu "$llc_run/llc-cpu"
check llc-tiny-cuda llc_short "$llc_run" cuda "$llc_run/llc-cuda"
estimate() { grep -o '"estimate": [0-9.e+-]*' "$LOGS/$1.log" | head -n1 | awk '{ print $2 }'; }
cpu_llc=$(estimate llc-tiny-cpu) cuda_llc=$(estimate llc-tiny-cuda)
if [ -n "$cpu_llc" ] && [ -n "$cuda_llc" ]; then
    agree=$(awk -v a="$cpu_llc" -v b="$cuda_llc" 'BEGIN { d = (a - b) / a; print (d < 0.1 && d > -0.1) ? "yes" : "NO" }')
    rows[-1]="${rows[-1]}LLC cuda $cuda_llc vs cpu $cpu_llc (within 10%: $agree)"
    if [ "$agree" != yes ]; then failed=$((failed + 1)); rows[-1]="${rows[-1]/PASS/FAIL}"; fi
fi
check llc-124m llc_short "$run_dir" cuda "$LOGS/llc-124m"
seconds=$(grep -o '"seconds": [0-9.e+-]*' "$LOGS/llc-124m.log" | head -n1 | awk '{ print $2 }')
[ -n "$seconds" ] && rows[-1]="${rows[-1]}2 chains x 40 steps: ${seconds} s (a default estimate is 10 x 200)"

echo
echo "== summary ($(date -u +%FT%TZ), logs in $LOGS)"
printf '%-14s %-5s %7s  %s\n' check result time detail
for r in "${rows[@]}"; do echo "$r"; done
exit "$failed"
