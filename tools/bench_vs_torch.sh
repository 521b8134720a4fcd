#!/usr/bin/env bash
# hgpt against its PyTorch reference (tools/torch_ref.py), both heads, in one call:
# runs `hgpt bench --json` and `torch_ref.py --json` with the same arguments, once
# per head (--set model.head=...), then prints tokens/s, ms/step, MFU and peak
# memory for hgpt harmonic, hgpt softmax, torch harmonic and torch softmax, and the
# ratios the performance issue sets targets for: hgpt/torch throughput (>= 1.15)
# and harmonic/softmax step time (<= 1.03); and, where hgpt profiled its ops
# (HGPT_ARGS=--profile), each head's ten longest ops against their floors.
#
# Usage: tools/bench_vs_torch.sh [ARGS...]
#   ARGS go to both tools: --config F, --set k=v, --micro-batch B, --steps N,
#   --warmup W, --device cuda|cpu, --peak-tflops X.
#   e.g. tools/bench_vs_torch.sh --device cuda --config configs/gpt2-124m-harmonic.toml \
#            --micro-batch 64 --steps 10 --warmup 3 --set train.grad_accum=1
# Environment: HGPT (default .devbin/hgpt if there, else target/release/hgpt),
# HGPT_ARGS (more arguments for hgpt bench alone, e.g. --profile), PYTHON (a Python
# with torch; default python3), TORCH_TIMEOUT (seconds for each torch_ref.py run,
# torch.compile's warm-up included; past it the run is redone in eager mode and
# marked so; default none), OUT (where the JSON reports go; default a temporary
# directory).
set -euo pipefail
cd "$(dirname "$0")/.."

HGPT=${HGPT:-$([ -x .devbin/hgpt ] && echo .devbin/hgpt || echo target/release/hgpt)}
PYTHON=${PYTHON:-python3}
DIR=${OUT:-$(mktemp -d)}
mkdir -p "$DIR"
source tools/cuda_env.sh
export HGPT_CACHE=${HGPT_CACHE:-$DIR/kernel-cache}

read -r -a hgpt_args <<<"${HGPT_ARGS:-}"
for head in harmonic softmax; do
    echo "== hgpt $head" >&2
    "$HGPT" bench "$@" "${hgpt_args[@]}" --set model.head=$head --json >"$DIR/hgpt-$head.json"
    echo "== torch $head" >&2
    echo "torch.compile" >"$DIR/torch-$head.mode"
    if [ -n "${TORCH_TIMEOUT:-}" ]; then
        if ! timeout --kill-after=10 "$TORCH_TIMEOUT" "$PYTHON" tools/torch_ref.py "$@" \
            --set model.head=$head --json >"$DIR/torch-$head.json"; then
            echo "== torch $head: over ${TORCH_TIMEOUT}s or failed compiled; eager instead" >&2
            echo "eager (compiled run over ${TORCH_TIMEOUT}s or failed)" >"$DIR/torch-$head.mode"
            timeout --kill-after=10 "$TORCH_TIMEOUT" "$PYTHON" tools/torch_ref.py "$@" \
                --set model.head=$head --json --no-compile >"$DIR/torch-$head.json"
        fi
    else
        "$PYTHON" tools/torch_ref.py "$@" --set model.head=$head --json >"$DIR/torch-$head.json"
    fi
done

"$PYTHON" - "$DIR" <<'EOF'
import json, sys
d = sys.argv[1]
r = {f"{impl} {head}": json.load(open(f"{d}/{impl}-{head}.json"))
     for impl in ("hgpt", "torch") for head in ("harmonic", "softmax")}
first = r["hgpt harmonic"]
print(f"\n{first['params'] / 1e6:.2f}M parameters, {first['micro_batch']} x {first['seq_len']} tokens x "
      f"{first['grad_accum']} micro-batches per step, {first['warmup_steps']} warm-up + {first['steps']} timed steps")
for name, x in r.items():
    mode = ""
    if name.startswith("torch"):
        mode = ", " + open(f"{d}/torch-{name.split()[1]}.mode").read().strip()
    print(f"  {name:<15} {x['device']}{mode}")
# One peak for every row (hgpt's), so the MFU column compares like with like.
peak = first["peak_tflops"]
print(f"\n{'':<15} {'tokens/s':>12} {'ms/step':>10} {'MFU':>7} {'peak MiB':>10}")
for name, x in r.items():
    mem = "-" if x["peak_memory_mib"] is None else f"{x['peak_memory_mib']:.0f}"
    mfu = x["model_tflops"] / peak
    print(f"{name:<15} {x['tokens_per_s']:>12.0f} {x['ms_per_step']:>10.2f} {100 * mfu:>6.1f}% {mem:>10}")
print(f"MFU: model FLOP/s (6 N + 6 L C T per token) over {peak:.3f} TFLOP/s ({first['peak_source']})")
for head in ("harmonic", "softmax"):
    ratio = r[f"hgpt {head}"]["tokens_per_s"] / r[f"torch {head}"]["tokens_per_s"]
    print(f"hgpt/torch throughput, {head}: {ratio:.3f}x (target >= 1.15x)")
for impl in ("hgpt", "torch"):
    ratio = r[f"{impl} harmonic"]["ms_per_step"] / r[f"{impl} softmax"]["ms_per_step"]
    target = " (target <= 1.03)" if impl == "hgpt" else ""
    print(f"harmonic/softmax step time, {impl}: {ratio:.3f}{target}")
for head in ("harmonic", "softmax"):
    x = r[f"hgpt {head}"]
    ops = sorted(x.get("ops", {}).items(), key=lambda o: -o[1]["ms_per_step"])
    if not ops:
        continue
    print(f"\nhgpt {head}: the ten longest ops of a {x['ms_per_step']:.2f} ms step "
          f"(ceilings: GEMM {x['gemm_peak_tflops']:.1f} TFLOP/s, copy {x['copy_gbps']:.0f} GB/s)")
    print(f"{'op':<27} {'ms/step':>9} {'share':>6} {'TFLOP/s':>8} {'GB/s':>7} {'floor ms':>9} {'bound':>7} {'of floor':>8}")
    for name, o in ops[:10]:
        tf = "-" if o["gflops"] is None else f"{o['gflops'] / 1e3:.2f}"
        print(f"{name:<27} {o['ms_per_step']:>9.3f} {100 * o['share']:>5.1f}% {tf:>8} {o['gbps']:>7.0f} "
              f"{o['floor_ms']:>9.3f} {o['bound']:>7} {100 * o['of_floor']:>7.1f}%")
    if x.get("outside_ops_share") is not None:
        print(f"{'(outside the ops)':<27} {x['outside_ops_share'] * x['ms_per_step']:>9.3f} "
              f"{100 * x['outside_ops_share']:>5.1f}%")
print(f"reports: {d}")
EOF
