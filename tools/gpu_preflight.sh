#!/usr/bin/env bash
# The preflight, run here (where Rust is) before each GPU attempt: everything the GPU
# run needs that a CPU can check, so no device time is spent on it.
#   1. the binaries, built from HEAD into .devbin/ (tools/build_devbin.sh);
#   2. the newest glibc symbol version they need (the device's glibc must be as new);
#   3. every kernel family compiles through NVRTC for sm_80 and sm_90 (cuda_compile),
#      no kernel spills, and the bf16 flash kernels reach their occupancy; prints their
#      ptxas resource table (registers, spills, shared memory, blocks per SM on sm_90);
#   4. the parity tests are listed, and fail rather than pass where no GPU opens;
#   5. the CPU half of the LLC comparison: a tiny checkpoint trained on the CPU and its
#      estimate at a fixed step size, into .devbin/llc-tiny (gpu_check.sh compares the
#      CUDA estimate with it);
#   6. tools/gpu_check.sh run here on .devbin's binaries, twice:
#      no-device: where no device opens, it must stop at stage 0 saying why and leave
#        its three result files;
#      emulated: on the emulated device (tools/emulated_device.sh --build-only builds
#        its libcuda and libcublasLt into target/cuda_emu/device), stages 0, 1 and 3
#        with a small tiny model (TINY_ARGS), 3-step determinism runs (DET_STEPS) and
#        the parity tests sized for a GPU, and NCCL (two minutes here; the full
#        tools/emulated_device.sh runs it), skipped (PARITY_SKIP): it must exit 0,
#        give the bf16 and fp32 smokes, a PASS row for every other parity test and a
#        SKIPPED row for each skipped one, name the
#        emulated device in its summary, leave exactly its three result files, and
#        loaded-libs.txt must name the emulated libraries. This runs the shipped
#        binaries through the shipped script (3 to 5 minutes here; EMU_BUDGET,
#        default 900 s, bounds it), so a wrong
#        path, a misread log or a lying summary line shows here, not on the GPU;
#   7. the size of what travels to the device (the working tree and .devbin): < 64 MiB.
# Then, with the device tool: carry [".devbin"], command `bash tools/gpu_check.sh 470`
# (stage 5, the comparison with PyTorch, gets what is left; alone, as a second call:
# `STAGES=5 bash tools/gpu_check.sh 400`).
# Usage: tools/gpu_preflight.sh   (exit status: the number of failed checks)
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
rows=()
result() { # result NAME OK|FAIL DETAIL
    rows+=("$(printf '%-12s %-5s %s' "$1" "$2" "$3")")
    [ "$2" = OK ] || failed=$((failed + 1))
}

echo "== 1. build"
if tools/build_devbin.sh >/tmp/hgpt-preflight-build.log 2>&1; then
    result build OK "$(cat .devbin/BUILD): hgpt $(du -h .devbin/hgpt | cut -f1), tests: $(ls .devbin/tests | tr '\n' ' ')"
else
    tail -n 20 /tmp/hgpt-preflight-build.log
    result build FAIL "see /tmp/hgpt-preflight-build.log"
    printf '%s\n' "${rows[@]}"; exit 1
fi
[[ $(cat .devbin/BUILD) == *dirty ]] && echo "note: the working tree differs from HEAD; commit before the GPU run"

echo "== 2. glibc"
newest=$(objdump -T .devbin/hgpt .devbin/tests/* | grep -o 'GLIBC_[0-9.]*' | sort -u -V | tail -n1)
result glibc OK "newest symbol version needed: $newest (Ubuntu 22.04 has 2.35, 24.04 2.39)"

echo "== 3. NVRTC"
source tools/cuda_env.sh
if CI=true HGPT_CACHE=$(mktemp -d) .devbin/tests/cuda_compile --test-threads=1 --nocapture \
        >/tmp/hgpt-preflight-nvrtc.log 2>&1; then
    result nvrtc OK "$(grep -o 'test result: .*' /tmp/hgpt-preflight-nvrtc.log | cut -d';' -f1)"
else
    result nvrtc FAIL "see /tmp/hgpt-preflight-nvrtc.log"
fi
grep -E '^(kernel \(sm_90|flash_attention_)' /tmp/hgpt-preflight-nvrtc.log

echo "== 4. parity tests without a GPU"
listed=$(.devbin/tests/cuda_parity --list --include-ignored 2>/dev/null | grep -c ': test$')
first=$(.devbin/tests/cuda_parity --list --include-ignored 2>/dev/null | sed -n 's/: test$//p' | head -n1)
if [ "$listed" -gt 0 ] && ! .devbin/tests/cuda_parity --exact "$first" \
        --include-ignored --test-threads=1 >/tmp/hgpt-preflight-parity.log 2>&1; then
    result parity OK "$listed tests listed; '$first' fails here, where no GPU opens"
else
    result parity FAIL "$listed tests listed; '$first' did not fail without a GPU"
fi

echo "== 5. LLC, the CPU half"
TINY=.devbin/llc-tiny
rm -rf "$TINY"
mkdir -p "$TINY"
EPS=1e-4
if .devbin/hgpt train --device cpu --steps 50 --out "$TINY/run" --set train.eval_every=0 \
        --set train.checkpoint_every=0 --set data.builtin_train_bytes=300000 \
        --set data.builtin_val_bytes=20000 >"$TINY/train.log" 2>&1 &&
   .devbin/hgpt llc --checkpoint "$TINY/run" --device cpu --epsilon $EPS --chains 2 --draws 20 \
        --burnin 20 --json --out "$TINY/llc-cpu" >"$TINY/llc-cpu.json" 2>"$TINY/llc-cpu.log"; then
    rm -rf "$TINY/llc-cpu"
    result llc-cpu OK "estimate $(grep -o '"estimate": *[0-9.e+-]*' "$TINY/llc-cpu.json" | head -n1 | sed 's/.*: *//') at eps $EPS"
else
    result llc-cpu FAIL "see $TINY/*.log"
fi

echo "== 6. gpu_check.sh without a GPU"
three="loaded-libs.txt logs.tgz summary.txt"
dry=$(mktemp -d)
OUT=$dry STAGES=0 tools/gpu_check.sh 120 >/tmp/hgpt-preflight-dry.log 2>&1
files=$(ls -A "$dry" | paste -sd' ' -)
if grep -q '^STOP:' "$dry/summary.txt" && [ "$files" = "$three" ]; then
    result no-device OK "stops at stage 0 saying why: $(grep -m1 -A1 '^STOP:' "$dry/summary.txt" | tail -n1 | sed 's/^ *//' | cut -c1-60)"
else
    result no-device FAIL "results: $files; see /tmp/hgpt-preflight-dry.log"
fi
rm -rf "$dry"

emu_dir=target/cuda_emu/device
emu_log=/tmp/hgpt-preflight-emulated.log
skip_names="nccl fifty_training_steps two_runs_of_twenty_steps at_gpt2_shapes"
if tools/emulated_device.sh --build-only >"$emu_log" 2>&1; then
    emu=$(mktemp -d)
    OUT=$emu STAGES="0 1 3" HGPT_EMULATED_DEVICE=$emu_dir PARITY_SKIP=$skip_names DET_STEPS=3 \
        TINY_ARGS="--set train.batch_size=4 --set train.seq_len=64" \
        tools/gpu_check.sh "${EMU_BUDGET:-900}" >>"$emu_log" 2>&1
    rc=$?
    sum=$emu/summary.txt
    all=$(.devbin/tests/cuda_parity --list --include-ignored 2>/dev/null | sed -n 's/: test$//p')
    want_skipped=$(echo "$all" | grep -c -E "$(echo "$skip_names" | tr ' ' '|')")
    want_run=$(( $(echo "$all" | grep -c .) - want_skipped ))
    passed=$(grep -c -E '^parity [^ ]+ +PASS ' "$sum")
    skipped=$(grep -c -E '^parity [^ ]+ +SKIPPED ' "$sum")
    files=$(ls -A "$emu" | paste -sd' ' -)
    why=()
    [ "$rc" -eq 0 ] || why+=("exit status $rc")
    for r in probe smoke-bf16 smoke-fp32 determinism; do
        grep -q -E "^$r +PASS " "$sum" || why+=("no PASS row for $r")
    done
    [ "$passed" -eq "$want_run" ] || why+=("$passed of $want_run parity tests PASS")
    [ "$skipped" -eq "$want_skipped" ] || why+=("$skipped of $want_skipped parity tests SKIPPED")
    grep -q '^NOTE: the emulated device ran this check' "$sum" || why+=("the summary does not name the emulated device")
    [ "$files" = "$three" ] || why+=("results: $files")
    for lib in libcuda.so libcublasLt.so; do
        grep -q "$emu_dir/$lib" "$emu/loaded-libs.txt" 2>/dev/null || why+=("loaded-libs.txt lacks $emu_dir/$lib")
    done
    if [ ${#why[@]} -eq 0 ]; then
        result emulated OK "stages 0 1 3 in $(sed -n 's/^total \([0-9]*s\).*/\1/p' "$sum"): smokes, $passed parity PASS, $skipped SKIPPED, determinism; $files"
    else
        result emulated FAIL "$(printf '%s; ' "${why[@]}")see $emu_log"
    fi
    echo "the emulated run's summary:"; cat "$sum"
    rm -rf "$emu"
else
    tail -n 20 "$emu_log"
    result emulated FAIL "the emulated device did not build; see $emu_log"
fi

echo "== 7. size"
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1)
devbin=$(du -sb .devbin | cut -f1)
total=$(( (tree + devbin) / 1048576 ))
if [ "$total" -lt 60 ]; then
    result size OK "${total} MiB travels (tree $((tree / 1048576)) MiB, .devbin $((devbin / 1048576)) MiB)"
else
    result size FAIL "${total} MiB travels; the limit is 64 MiB"
fi

echo
printf '%-12s %-5s %s\n' check result detail
printf '%s\n' "${rows[@]}"
exit "$failed"
