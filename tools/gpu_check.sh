#!/usr/bin/env bash
# The staged GPU check: one bounded command on a machine with an NVIDIA GPU and the
# binaries that tools/gpu_preflight.sh put in .devbin/ (no Rust needed there).
#
#   tools/gpu_check.sh [BUDGET_SECONDS]      (default 480; STAGES="0 1 2 3 4 5" or "0,1" to choose)
#
# Stage 0, environment and smoke: OS, glibc, nvidia-smi, LD_LIBRARY_PATH, the CUDA
#   libraries really loaded (LD_DEBUG=libs), toolkit and pip versions; then 3 steps of
#   the tiny model on CUDA in bf16 and in fp32 (CUBLASLT_LOG_LEVEL=1). If the device
#   or its libraries cannot open, the check stops there and says why.
# Stage 1, parity: each CUDA/CPU parity test in its own process (a sticky CUDA error
#   cannot hide the rest), op-level tests first. A test failing with a CUDA error is
#   re-run with CUDA_LAUNCH_BLOCKING=1, then under compute-sanitizer while time lasts.
# Stage 2, GPT-2 124M: a 30-step training smoke (loss must fall), `hgpt bench`, and
#   the LLC through CUDA against the CPU's estimate at one fixed step size (the CPU
#   half is computed by the preflight and shipped in .devbin/llc-tiny).
# Stage 3, determinism: two runs of the same 20 CUDA steps (bf16), losses, gradient
#   norms and parameters compared bit for bit (no float atomics in any backward).
# Stage 4, NCCL at world size 1: the tiny model for 20 steps as rank 0 of 1 (torchrun's
#   variables, so the data-parallel path with every collective through NCCL) against
#   the plain run of the same config; the loss curves must agree within 1e-6
#   relative and the rank's log must name NCCL.
# Stage 5, performance (reported apart: does not decide the exit status): GPT-2 124M,
#   both heads, `hgpt bench --profile` against tools/torch_ref.py (torch.compile, its
#   warm-up bounded: past TORCH_TIMEOUT, default 100 s, a head is redone in eager mode
#   and marked so) through tools/bench_vs_torch.sh: the four rows, the two ratios and
#   each head's ten longest ops against their floors, into the summary; then the
#   largest micro-batch `hgpt memory` promises for the GPU's free memory, run for two
#   steps, its peak against the plan.
#
# Every step runs under `timeout --kill-after=10`, clipped to the budget left; no step
# starts with under 20 s left. Runs, checkpoints and the kernel cache stay in /tmp.
# The results folder ($OUT, else .devbin/gpu-check) gets three files only:
# summary.txt (a line per step, written as it goes), logs.tgz (repacked after every
# step, so a kill still returns the latest) and loaded-libs.txt. Exit status: the
# number of failed steps in stages 0-4.
#
# A tool the machine lacks (nvidia-smi, compute-sanitizer, python3, torch) gives a line
# saying so ("nvidia-smi: not found") where its result would be, not a stop. For a
# rehearsal without a GPU (tools/gpu_preflight.sh runs one), the environment may set:
#   HGPT_EMULATED_DEVICE=DIR  the emulated device's libcuda.so.1 and libcublasLt.so.13
#       (tools/emulated_device.sh --build-only puts them in target/cuda_emu/device), put
#       first on LD_LIBRARY_PATH; the summary then says, in its head and after the
#       smoke, that these are the emulated device's results, not a GPU's.
#   PARITY_SKIP="NAME ..."    stage 1 runs no parity test whose name contains one of
#       these; each gets a SKIPPED row (not counted as failed) and the total says how
#       many (the emulated device takes minutes for each test sized for a GPU).
#   TINY_ARGS="--set K=V ..." more hgpt arguments for every tiny-model run (stages 0,
#       3 and 4), e.g. a smaller batch and sequence.
#   DET_STEPS=N               stage 3's steps per run (default 20).
# Unset, each of these leaves the GPU run as described above.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${1:-480}
STAGES=${STAGES:-0 1 2 3 4 5}
STAGES=${STAGES//,/ }
for s in $STAGES; do
    [[ $s == [0-5] ]] || { echo "STAGES=$STAGES: '$s' is not a stage (0 to 5)" >&2; exit 1; }
done
BIN=${HGPT_DEVBIN:-.devbin}
RESULTS=${OUT:-$BIN/gpu-check}
WORK=$(mktemp -d /tmp/hgpt-gpu.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$RESULTS" "$LOGS"
rm -f "$RESULTS/summary.txt" "$RESULTS/logs.tgz" "$RESULTS/loaded-libs.txt"
SUMMARY=$RESULTS/summary.txt
chmod +x "$BIN/hgpt" "$BIN"/tests/* 2>/dev/null

export HGPT_CACHE=/tmp/hgpt-kernel-cache
# shellcheck source=tools/cuda_env.sh
source tools/cuda_env.sh
if [ -n "${HGPT_EMULATED_DEVICE:-}" ]; then
    [ -f "$HGPT_EMULATED_DEVICE/libcuda.so.1" ] || {
        echo "HGPT_EMULATED_DEVICE=$HGPT_EMULATED_DEVICE: no libcuda.so.1 there (tools/emulated_device.sh --build-only builds it)" >&2
        exit 1
    }
    LD_LIBRARY_PATH="$(cd "$HGPT_EMULATED_DEVICE" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

start=$SECONDS
failed=0
left() { echo $((BUDGET - (SECONDS - start))); }
say() { echo "$*" | tee -a "$SUMMARY"; }
pack() { tar -czf "$RESULTS/logs.tgz.tmp" -C "$WORK" logs 2>/dev/null &&
    mv "$RESULTS/logs.tgz.tmp" "$RESULTS/logs.tgz"; }

say "hgpt GPU check: $(date -u +%FT%TZ), commit $(cat "$BIN/BUILD" 2>/dev/null || echo unknown)"
say "budget ${BUDGET}s, stages $STAGES, work dir $WORK"
[ -n "${HGPT_EMULATED_DEVICE:-}" ] &&
    say "EMULATED DEVICE: libcuda and libcublasLt from $HGPT_EMULATED_DEVICE (kernels on the CPU); not a GPU result"
say "$(printf '%-44s %-7s %5s  %s' step result secs detail)"

# step NAME CAP CMD...: runs CMD into $LOGS/NAME.log under a timeout of CAP seconds
# (clipped to the budget). Sets $status (PASS, FAIL, TIMEOUT or SKIP) and $log; the
# caller adds the summary line with `row`.
step() {
    local name=$1 cap=$2; shift 2
    log=$LOGS/${name//[^A-Za-z0-9._-]/_}.log
    local remaining; remaining=$(left)
    t0=$SECONDS
    if [ "$remaining" -lt 20 ]; then
        status=SKIP; echo "skipped: ${remaining}s of budget left" >"$log"; return
    fi
    [ "$cap" -gt $((remaining - 10)) ] && cap=$((remaining - 10))
    echo "== $name (cap ${cap}s): $*"
    { echo "\$ $*"; echo; } >"$log"
    # Through bash, so CMD may be one of the exported functions below.
    timeout --kill-after=10 "$cap" bash -c '"$@"' _ "$@" >>"$log" 2>&1
    local rc=$?
    case $rc in
        0) status=PASS ;;
        124|137) status=TIMEOUT ;;
        *) status=FAIL ;;
    esac
    echo "exit status $rc after $((SECONDS - t0))s" >>"$log"
}

# row DETAIL [counts]: the summary line of the last step; "counts" makes a non-PASS
# count as a failure, and adds the log's first lines that say why (not a parity
# test's report of a relative error in bounds, nor a backtrace's frames).
row() {
    say "$(printf '%-44s %-7s %5s  %s' "$name_shown" "$status" $((SECONDS - t0)) "$1")"
    if [ "${2:-}" = counts ] && [ "$status" != PASS ]; then
        failed=$((failed + 1))
        grep -E "error|Err|panicked|FAILED|SKIPPED|mismatch|CUDA_ERROR|CUBLAS_STATUS" "$log" |
            grep -v -E ': relative error [^ ]*$|^ *[0-9]+: ' | head -n 5 |
            cut -c1-300 | sed 's/^/    /' | tee -a "$SUMMARY"
    fi
    pack
}
run() { name_shown=$1; step "$@"; }

# Lines of a log that say the device or its libraries could not open.
OPEN_FAILURE='not found|cannot open|No such file|cuInit|CUDA_ERROR_NO_DEVICE|CUDA_ERROR_STUB|CUDA_ERROR_SYSTEM|GLIBC_|nvrtc|NVRTC|cublasLtCreate|no usable GPU|failed to open'
CUDA_ERROR='CUDA_ERROR|CUBLAS_STATUS|cuBLASLt|illegal|misaligned|unspecified launch'

# with VAR=VALUE... -- CMD...: CMD (a command or an exported function) with VARs set.
with() { while [ "$1" != -- ]; do export "${1?}"; shift; done; shift; "$@"; }
tiny_train() { # tiny_train OUTDIR STEPS [--set ...]: the tiny model on CUDA
    local out=$1 steps=$2 extra; shift 2
    read -r -a extra <<<"${TINY_ARGS:-}"
    "$BIN/hgpt" train --device cuda --steps "$steps" --out "$out" \
        --set data.builtin_train_bytes=300000 --set data.builtin_val_bytes=20000 \
        --set train.eval_every=0 --set train.log_every=1 ${extra[@]+"${extra[@]}"} "$@"
}
export BIN WORK TINY_ARGS="${TINY_ARGS:-}"
export -f with tiny_train

# ---------------------------------------------------------------- stage 0
if [[ " $STAGES " == *" 0 "* ]]; then
    probe() {
        echo "## system"; uname -a; grep PRETTY_NAME /etc/os-release; ldd --version | head -n1
        echo "## hgpt"; "$BIN/hgpt" --version
        echo "## nvidia-smi"
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,persistence_mode,mig.mode.current \
                --format=csv 2>&1
        else
            echo "nvidia-smi: not found"
        fi
        echo "## library path"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        ldconfig -p | grep -E 'libcuda\.|libnvrtc|libcublasLt|libnccl' | head -n 20
        ls /usr/local/nvidia/lib64 /usr/local/nvidia/lib 2>/dev/null | grep -E 'libcuda' | head
        echo "## toolkit"; cat "${CUDA_HOME:-/usr/local/cuda}/version.json" 2>/dev/null |
            grep -A1 -E '"(cuda|libcublas|cuda_nvrtc)"' | head -n 12
        ls "${CUDA_HOME:-/usr/local/cuda}"/lib64/lib{nvrtc,cublasLt}* 2>/dev/null
        echo "## pip"; python3 -m pip list 2>/dev/null | grep -i -E '^(torch|nvidia-)' | head -n 30
        for t in nvcc compute-sanitizer ncu; do echo "$t: $(command -v $t || echo absent)"; done
    }
    export -f probe
    run probe 60 probe
    detail=$(grep -m1 -A1 '^name' "$log" | tail -n1)
    row "$(echo "${detail:-$(grep -m1 '^nvidia-smi: not found' "$log")}" | cut -c1-80)" counts

    for precision in bf16 fp32; do
        run "smoke-$precision" 180 with LD_DEBUG=libs LD_DEBUG_OUTPUT="$WORK/ld-$precision" \
            CUBLASLT_LOG_LEVEL=1 -- tiny_train "$WORK/smoke-$precision" 3 \
            --set train.precision=$precision
        detail=$(grep -m1 '^device:' "$log" | cut -c1-100)
        if [ "$precision" = bf16 ]; then
            cat "$WORK"/ld-bf16.* 2>/dev/null | grep 'calling init:' |
                grep -E 'libcuda|nvrtc|cublas|libcudart' | sed 's/.*calling init: //' |
                sort -u >"$RESULTS/loaded-libs.txt"
            cp "$RESULTS/loaded-libs.txt" "$LOGS/"
        fi
        rm -f "$WORK"/ld-"$precision".*
        row "$detail" counts
        emulated=$(grep -m1 -o 'hgpt emulated device ([^)]*)' "$log")
        [ "$precision" = bf16 ] && [ -n "$emulated" ] &&
            say "NOTE: the emulated device ran this check (device: $emulated), not a GPU"
        if [ "$status" != PASS ] && grep -q -E "$OPEN_FAILURE" "$log"; then
            say "STOP: the device or its CUDA libraries did not open (see smoke-$precision.log):"
            grep -m3 -E "$OPEN_FAILURE" "$log" | cut -c1-300 | sed 's/^/    /' | tee -a "$SUMMARY"
            pack; exit "$failed"
        elif [ "$status" = FAIL ]; then
            run "smoke-$precision-blocking" 120 with CUDA_LAUNCH_BLOCKING=1 CUBLASLT_LOG_LEVEL=2 -- \
                tiny_train "$WORK/smoke-$precision-blocking" 1 --set train.precision=$precision
            row "CUDA_LAUNCH_BLOCKING=1, 1 step: $(grep -m1 -E "$CUDA_ERROR|error|panicked" "$log" | cut -c1-70)"
        fi
    done
fi

# ---------------------------------------------------------------- stage 1
if [[ " $STAGES " == *" 1 "* ]]; then
    PARITY=$BIN/tests/cuda_parity
    # Op-level tests first, whole-model and timed ones last.
    mapfile -t tests < <("$PARITY" --list --include-ignored 2>/dev/null | sed -n 's/: test$//p' |
        awk '{ r = 5 }
             /op|layernorm|encoder|gelu|adamw|sgld|reduce|matmul|gemm/ { r = 1 }
             /flash|attention/ { r = 2 }
             /head/ { r = 3 }
             /fused|shadow|memory/ { r = 4 }
             /model|gradient|training|steps|curve/ { r = 6 }
             /gpt2|124m|timed/ { r = 7 }
             { print r "\t" $0 }' | sort -s -n -k1,1 | cut -f2)
    if [ "${#tests[@]}" -eq 0 ]; then
        name_shown=parity status=FAIL t0=$SECONDS log=$LOGS/parity-list.log
        "$PARITY" --list --include-ignored >"$log" 2>&1
        row "no parity tests listed by $PARITY" counts
    fi
    # A failed parity test's panic message (with the first mismatch where it lists
    # them); else the largest of the relative errors it printed (or one that is not a
    # number), else its first line naming an error, else its time.
    parity_detail() {
        if [ "$status" != PASS ] && grep -q 'panicked at' "$1"; then
            awk '/panicked at/ { getline m; if (m ~ /mismatches:$/) { getline n; m = m " " n }
                                 print m; exit }' "$1"
        elif [ "$status" != PASS ] && ! grep -q "test result: ok. 1 passed" "$1"; then
            echo "did not report one test passed: $(grep -m1 -o 'test result: .*' "$1")"
        elif grep -q 'relative error' "$1"; then
            grep -o 'relative error [^ ,;]*' "$1" | awk '
                $3 !~ /^[0-9.]+(e[+-]?[0-9]+)?$/ { odd = $3 }
                $3 + 0 >= m { m = $3 + 0; s = $3 }
                END { if (odd != "") printf "a relative error of %s among %d checks", odd, NR
                      else printf "max relative error %s over %d checks", s, NR }'
        elif grep -q -E 'max rel|rel err|error [0-9]' "$1"; then
            grep -m1 -E 'max rel|rel err|error [0-9]' "$1" | sed 's/^test [^ ]* \.\.\. //'
        else
            grep -m1 -o 'finished in [0-9.]*s' "$1"
        fi
    }
    reruns=0 sanitized=0 skipped=0
    read -r -a parity_skip <<<"${PARITY_SKIP:-}"
    for t in "${tests[@]}"; do
        for s in ${parity_skip[@]+"${parity_skip[@]}"}; do
            [[ $t == *"$s"* ]] || continue
            name_shown="parity ${t}" status=SKIPPED t0=$SECONDS
            row "not run: PARITY_SKIP names '$s'"
            skipped=$((skipped + 1))
            continue 2
        done
        run "parity ${t}" 150 "$PARITY" --exact "$t" --include-ignored --nocapture --test-threads=1
        # A test that ran must say so: one passed, none ignored.
        if [ "$status" = PASS ] && { ! grep -q "test result: ok. 1 passed" "$log" || grep -q SKIPPED "$log"; }; then
            status=FAIL
        fi
        first_log=$log
        row "$(parity_detail "$log" | cut -c1-90)" counts
        if [ "$status" != PASS ] && grep -q -E "$CUDA_ERROR" "$first_log" && [ $reruns -lt 2 ]; then
            reruns=$((reruns + 1))
            run "parity ${t} (blocking)" 150 env CUDA_LAUNCH_BLOCKING=1 \
                "$PARITY" --exact "$t" --include-ignored --nocapture --test-threads=1
            row "$(grep -m1 -E "$CUDA_ERROR" "$log" | cut -c1-90)"
            if [ $sanitized -eq 0 ] && ! command -v compute-sanitizer >/dev/null; then
                sanitized=1
                say "    compute-sanitizer: not found (no memcheck re-run)"
            elif [ $sanitized -eq 0 ] && [ "$(left)" -gt 200 ]; then
                sanitized=1
                run "parity ${t} (memcheck)" 180 compute-sanitizer --tool memcheck \
                    --print-limit 20 "$PARITY" --exact "$t" --include-ignored --test-threads=1
                row "$(grep -m1 -E 'ERROR SUMMARY|Invalid' "$log" | cut -c1-90)"
            fi
        fi
    done
fi

# ---------------------------------------------------------------- stage 2
if [[ " $STAGES " == *" 2 "* ]]; then
    # The smoke's batch is 16 x 1024 tokens (30 times smaller than the recipe's), so its
    # learning rate is GPT-2's usual 6e-4, not the recipe's 6e-3.
    SMOKE_124M=(--config configs/gpt2-124m-harmonic.toml --set train.grad_accum=1
        --set data.builtin_train_bytes=4000000 --set data.builtin_val_bytes=200000)
    run train-124m 200 "$BIN/hgpt" train --device cuda --steps 30 --out "$WORK/train-124m" \
        "${SMOKE_124M[@]}" --set train.lr=6e-4 --set train.min_lr=6e-5 \
        --set train.warmup_steps=10 --set train.log_every=1 --set train.eval_every=0
    detail=""
    if [ -f "$WORK/train-124m/metrics.jsonl" ]; then
        cp "$WORK/train-124m/metrics.jsonl" "$LOGS/train-124m-metrics.jsonl"
        losses=$(grep -o '"train_loss":[0-9.e+-]*' "$WORK/train-124m/metrics.jsonl" | cut -d: -f2)
        first=$(echo "$losses" | head -n1)
        last5=$(echo "$losses" | tail -n5 | awk '{ s += $1 } END { if (NR) printf "%.4f", s / NR }')
        tps=$(grep -o '"tokens_per_s":[0-9.e+-]*' "$WORK/train-124m/metrics.jsonl" | tail -n1 | cut -d: -f2)
        falling=$(awk -v a="$first" -v b="$last5" 'BEGIN { print (b != "" && b < a - 0.1) ? "yes" : "NO" }')
        detail="loss $first -> $last5 (last 5), falling: $falling, $(printf '%.0f' "${tps:-0}") tok/s"
        [ "$falling" = yes ] || { [ "$status" = PASS ] && status=FAIL; }
    fi
    row "$detail" counts

    run bench-124m 150 "$BIN/hgpt" bench --device cuda --steps 5 --warmup 2 --json "${SMOKE_124M[@]}"
    field() { grep -o "\"$1\": *[0-9.e+-]*" "$log" | head -n1 | sed 's/.*: *//'; }
    detail=""
    if [ -n "$(field tokens_per_s)" ]; then
        detail=$(printf '%.0f tok/s, %.1f ms/step, MFU %.3f, peak %.0f MiB (plan %.0f), fallbacks %s' \
            "$(field tokens_per_s)" "$(field ms_per_step)" "$(field mfu)" "$(field peak_memory_mib)" \
            "$(field planned_memory_mib)" "$(field epilogue_fallbacks)")
    fi
    row "$detail" counts

    # LLC through the CUDA backend against the CPU at the same fixed step size, chains,
    # draws and seed (bf16 GEMMs, so within 10%, not bit for bit).
    TINY=$BIN/llc-tiny
    if [ -f "$TINY/llc-cpu.json" ]; then
        eps=$(grep -o '"epsilon": *[0-9.e+-]*' "$TINY/llc-cpu.json" | head -n1 | sed 's/.*: *//')
        cpu=$(grep -o '"estimate": *[0-9.e+-]*' "$TINY/llc-cpu.json" | head -n1 | sed 's/.*: *//')
        run llc-tiny-cuda 120 "$BIN/hgpt" llc --checkpoint "$TINY/run" --device cuda --epsilon "$eps" \
            --chains 2 --draws 20 --burnin 20 --json --out "$WORK/llc-tiny-cuda"
        cuda=$(grep -o '"estimate": *[0-9.e+-]*' "$log" | head -n1 | sed 's/.*: *//')
        agree=$(awk -v a="$cpu" -v b="$cuda" 'BEGIN { d = (b - a) / a; print (b != "" && d < 0.1 && d > -0.1) ? "yes" : "NO" }')
        [ "$agree" = yes ] || { [ "$status" = PASS ] && status=FAIL; }
        row "cuda ${cuda:-?} vs cpu $cpu at eps $eps (within 10%: $agree)" counts
    else
        name_shown=llc-tiny-cuda status=FAIL t0=$SECONDS log=/dev/null
        row "$TINY/llc-cpu.json missing: run tools/gpu_preflight.sh first" counts
    fi
    if [ -d "$WORK/train-124m/checkpoints" ]; then
        run llc-124m 150 "$BIN/hgpt" llc --checkpoint "$WORK/train-124m" --device cuda \
            --chains 2 --draws 20 --burnin 20 --json --out "$WORK/llc-124m"
        row "2 chains x (20 + 20) steps: $(grep -o '"seconds": *[0-9.]*' "$log" | sed 's/.*: *//') s" counts
    fi
fi

# ---------------------------------------------------------------- stage 3
if [[ " $STAGES " == *" 3 "* ]]; then
    # Tensors of a checkpoint's model.safetensors, hashed in name order (its metadata
    # holds a time, so the file itself differs run to run).
    tensor_hash() {
        python3 - "$1" <<'PY'
import hashlib, json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
hdr, data, sha = json.loads(b[8:8 + n]), b[8 + n:], hashlib.sha256()
for k in sorted(k for k in hdr if k != "__metadata__"):
    s, e = hdr[k]["data_offsets"]
    sha.update(k.encode()); sha.update(data[s:e])
print(sha.hexdigest())
PY
    }
    # The last line it prints says what it found.
    det() {
        command -v python3 >/dev/null || { echo "python3: not found"; return 1; }
        local r ckpt
        # HGPT_EMU_SEED: on the emulated device, the two runs take blocks and threads in
        # different orders (a GPU ignores it).
        for r in a b; do
            HGPT_EMU_SEED=$([ $r = a ] && echo 1 || echo 2) \
                tiny_train "$WORK/det-$r" "$DET_STEPS" --set train.checkpoint_every=0 ||
                { echo "run $r failed"; return 1; }
        done
        for r in a b; do
            ckpt=$WORK/det-$r/checkpoints/$(printf 'step_%08d' "$DET_STEPS")/model.safetensors
            grep -o '"train_loss":[^,]*,"lr":[^,]*,"grad_norm":[^,]*' "$WORK/det-$r/metrics.jsonl" >"$WORK/det-$r.losses"
            tensor_hash "$ckpt" >>"$WORK/det-$r.losses" || { echo "no parameters hashed from $ckpt"; return 1; }
        done
        diff "$WORK/det-a.losses" "$WORK/det-b.losses" || { echo "losses, norms or parameters differ"; return 1; }
        echo "losses, norms, parameters identical"
    }
    DET_STEPS=${DET_STEPS:-20}
    export DET_STEPS
    export -f tensor_hash det
    run determinism 150 det
    row "two $DET_STEPS-step bf16 runs: $(grep -v '^exit status' "$log" | tail -n1 | cut -c1-70)" counts
fi

# ---------------------------------------------------------------- stage 4
if [[ " $STAGES " == *" 4 "* ]]; then
    # Prints the largest relative difference between two runs' loss curves, or
    # fails when a curve is missing or their lengths differ.
    nccl_ws1() {
        curve() { grep -o '"train_loss":[0-9.e+-]*' "$1/metrics.jsonl" | cut -d: -f2; }
        tiny_train "$WORK/nccl-plain" 20 --set train.checkpoint_every=0 || return 1
        with RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 -- \
            tiny_train "$WORK/nccl-ws1" 20 --set train.checkpoint_every=0 2>"$WORK/nccl-ws1.err"
        local rc=$?
        cat "$WORK/nccl-ws1.err"
        [ $rc -eq 0 ] || return 1
        grep -q -i nccl "$WORK/nccl-ws1.err" || { echo "the rank's log does not name NCCL"; return 1; }
        paste <(curve "$WORK/nccl-plain") <(curve "$WORK/nccl-ws1") | awk '
            NF != 2 { bad = 1 }
            { d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1); if (r > m) m = r; n++ }
            END { printf "max rel diff %.3g over %d steps\n", m, n; exit (bad || n != 20 || m > 1e-6) }'
    }
    export -f nccl_ws1
    run nccl-world-1 240 nccl_ws1
    row "rank 0 of 1 through NCCL vs the plain run: $(grep -m1 -o 'max rel diff .*' "$log")" counts
fi

# ---------------------------------------------------------------- stage 5
if [[ " $STAGES " == *" 5 "* ]]; then
    # Micro-batch 64 (65,536 tokens a step), the shape of docs/DESIGN.md 6.1's predictions.
    PERF_ARGS=(--device cuda --config configs/gpt2-124m-harmonic.toml --micro-batch 64
        --steps 10 --warmup 3 --set train.grad_accum=1
        --set data.builtin_train_bytes=4000000 --set data.builtin_val_bytes=200000)
    run perf-vs-torch 420 with HGPT="$BIN/hgpt" HGPT_ARGS=--profile OUT="$WORK/perf" \
        TORCH_TIMEOUT="${TORCH_TIMEOUT:-100}" -- tools/bench_vs_torch.sh "${PERF_ARGS[@]}"
    cp "$WORK"/perf/*.json "$WORK"/perf/*.mode "$LOGS/" 2>/dev/null
    detail=$(grep -E '^hgpt/torch throughput' "$log" | sed 's/.*, //; s/ (target.*//' | paste -sd/ -)
    grep -q "No module named 'torch'" "$log" && detail="torch: not found"
    row "hgpt/torch ${detail:-?}"
    # The table itself: from the rows' header to the end of the report.
    sed -n '/tokens\/s *ms\/step/,/^reports:/p' "$log" | grep -v '^reports:' | tee -a "$SUMMARY"
    pack

    # The largest micro-batch the memory plan promises for the GPU's free memory (less
    # 1 GiB for the context and cuBLASLt) must run, its peak near the plan.
    largest() {
        local free_mib gib b t
        for t in nvidia-smi python3; do command -v $t >/dev/null || { echo "$t: not found"; return 1; }; done
        free_mib=$(nvidia-smi --query-gpu=memory.free --format=csv,noheader,nounits | head -n1)
        gib=$(awk -v m="$free_mib" 'BEGIN { printf "%.2f", m / 1024 - 1 }')
        b=$("$BIN/hgpt" memory --config configs/gpt2-124m-harmonic.toml --gpu-memory "$gib" --json |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["fits"][0]["largest_micro_batch"])')
        echo "free $free_mib MiB; the plan fits micro-batch $b in $gib GiB"
        "$BIN/hgpt" bench --device cuda --config configs/gpt2-124m-harmonic.toml --micro-batch "$b" \
            --steps 2 --warmup 1 --json --set train.grad_accum=1 \
            --set data.builtin_train_bytes=4000000 --set data.builtin_val_bytes=400000
    }
    export -f largest
    run largest-micro-batch 150 largest
    detail=$(grep -m1 -o -E 'fits micro-batch [0-9]*|^(nvidia-smi|python3): not found' "$log")
    peak=$(grep -o '"peak_memory_mib": *[0-9.e+-]*' "$log" | head -n1 | sed 's/.*: *//')
    planned=$(grep -o '"planned_memory_mib": *[0-9.e+-]*' "$log" | head -n1 | sed 's/.*: *//')
    if [ -n "$peak" ] && [ -n "$planned" ]; then
        detail="$detail: peak $peak MiB, plan $planned MiB ($(awk -v p="$peak" -v q="$planned" \
            'BEGIN { printf "%+.2f%%", 100 * (p - q) / q }'))"
    fi
    row "$detail"
fi

say "total $((SECONDS - start))s; failed steps (stages 0-4): $failed$([ "${skipped:-0}" -eq 0 ] ||
    echo "; parity tests skipped (PARITY_SKIP): $skipped")"
pack
echo; echo "== summary"; cat "$SUMMARY"
exit "$failed"
