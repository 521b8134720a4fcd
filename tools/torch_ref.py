#!/usr/bin/env python3
"""The PyTorch reference of hgpt's model: timed like `hgpt bench`, and checked
against `hgpt train` step by step.

    python tools/torch_ref.py [--config F] [--set k=v]... [--micro-batch B]
        [--steps N] [--warmup W] [--device cuda|cpu] [--peak-tflops X] [--json]
    python tools/torch_ref.py --check [--config F] [--set k=v]... [--steps N]

The model is hgpt's exactly (src/model, src/head, docs/DESIGN.md section 3): GPT-2 with
pre-LayerNorm blocks, biases in every Linear, GELU (tanh), causal attention, ln_f,
then the harmonic head (s = max(|h|^2 + |w|^2 - 2 h.w, eps), z = -(n/2) ln s,
cross-entropy on z) or the softmax head, tied to wte unless the config unties it.
Parameter names are hgpt's checkpoint names (wte.weight, h.0.attn.c_attn.weight
as [out, in], ...), so a checkpoint's model.safetensors loads as is. Same init
(normal 0.02, residual projections 0.02/sqrt(2 n_layer), LayerNorm 1 and 0, biases
0), same AdamW (decay on matrices only, eps = train.adam_eps), same schedule
(linear warm-up, cosine to min_lr), same clipping (grads times clip/norm when the
global norm exceeds clip) and accumulation (each micro-batch's mean loss / accum).

Timing (default): torch.compile, scaled_dot_product_attention (causal), fused
AdamW and bf16 autocast on CUDA, random tokens; warm-up steps, then timed
optimizer steps: tokens/s, ms/step, MFU by llm.c's count (6 N + 6 L C T per token)
over --peak-tflops (default 989, H100 SXM dense bf16, on CUDA; on the CPU the
measured fp32 GEMM peak) and peak GPU memory. --json prints the fields of `hgpt
bench --json` that mean the same. The harmonic head's dot products come out of the
bf16 GEMM rounded to bf16 (autocast's output type) before the fp32 distance math:
hgpt keeps them fp32, so this reference does slightly less work, not more.

--check: writes a token shard holding exactly grad_accum x batch_size windows
(every step then trains on all of them, in an order that cannot change the mean
loss or the gradient), runs `hgpt train --device cpu` on it for --steps steps and
once for 0 steps (its initial weights), loads those weights here, trains the same
steps in fp32 on the CPU and compares every step's loss and gradient norm; exit 1
unless the losses agree within --tolerance (relative, default 1e-5).

Needs torch (and safetensors for --check); no network.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H100_BF16_TFLOPS = 989.0


# ---- configuration: hgpt's TOML, with --set overrides read as hgpt reads them ----


def parse_value(raw):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_config(path, sets):
    with open(path, "rb") as f:
        config = tomllib.load(f)
    for assignment in sets:
        key, _, value = assignment.partition("=")
        section, _, name = key.strip().partition(".")
        if section not in config or not name:
            sys.exit(f"error: --set {assignment}: expected section.key=value with a section of the config")
        config[section][name] = parse_value(value.strip())
    return config


def head_exponent(m):
    """n of the harmonic head, as hgpt resolves it ("sqrt" is sqrt(n_embd) in f32)."""
    n = m["harmonic_exponent"]
    return float(torch.tensor(math.sqrt(m["n_embd"]), dtype=torch.float32)) if n == "sqrt" else float(n)


# ---- the model ----


class Attention(nn.Module):
    def __init__(self, c, nh):
        super().__init__()
        self.nh = nh
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c, 4 * c)
        self.c_proj = nn.Linear(4 * c, c)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c, nh, eps):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c, eps=eps)
        self.attn = Attention(c, nh)
        self.ln_2 = nn.LayerNorm(c, eps=eps)
        self.mlp = Mlp(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt(nn.Module):
    def __init__(self, m, bf16):
        super().__init__()
        c, layers = m["n_embd"], m["n_layer"]
        self.wte = nn.Embedding(m["vocab_size"], c)
        self.wpe = nn.Embedding(m["block_size"], c)
        self.h = nn.ModuleList(Block(c, m["n_head"], m["ln_eps"]) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c, eps=m["ln_eps"])
        self.tied = m["tie_embeddings"]
        if not self.tied:
            self.lm_head = nn.Linear(c, m["vocab_size"], bias=False)
        self.harmonic = m["head"] == "harmonic"
        self.half_n = head_exponent(m) / 2
        self.eps = m["harmonic_eps"]
        self.bf16 = bf16
        resid_std = 0.02 / math.sqrt(2 * layers)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=resid_std)
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        h = self.ln_f(x).flatten(0, 1)
        w = self.wte.weight if self.tied else self.lm_head.weight
        return self.head_loss(h, w, targets.flatten())

    def head_loss(self, h, w, targets):
        if self.bf16:
            # The exact operands of the bf16 GEMM, also for the norms (as hgpt).
            h, w = h.bfloat16(), w.bfloat16()
        dots = (h @ w.t()).float()
        if not self.harmonic:
            return F.cross_entropy(dots, targets)
        h_sq = h.float().pow(2).sum(1, keepdim=True)
        w_sq = w.float().pow(2).sum(1)
        s = (h_sq + w_sq - 2 * dots).clamp_min(self.eps)
        return F.cross_entropy(-self.half_n * s.log(), targets)


# ---- training: hgpt's optimizer, schedule and clipping ----


def learning_rate(t, step):
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / (t["warmup_steps"] + 1)
    if step >= t["max_steps"]:
        return t["min_lr"]
    progress = (step - t["warmup_steps"]) / max(t["max_steps"] - t["warmup_steps"], 1)
    return t["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (t["lr"] - t["min_lr"])


def optimizer(model, t, fused):
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    groups = [
        {"params": decay, "weight_decay": t["weight_decay"]},
        {"params": rest, "weight_decay": 0.0},
    ]
    kind = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        groups, lr=t["lr"], betas=(t["beta1"], t["beta2"]), eps=t.get("adam_eps", 1e-8), **kind
    )


def train_step(model, forward, opt, t, step, micro_batches, autocast, guard):
    """One optimizer step over `micro_batches` [(inputs, targets)]: (loss, grad norm).
    With `guard`, a step whose loss or norm is not finite changes nothing, as in
    hgpt (timed runs leave it out: it costs a sync per step and never fires)."""
    opt.zero_grad(set_to_none=True)
    accum = len(micro_batches)
    loss = 0.0
    for x, y in micro_batches:
        with autocast:
            micro = forward(x, y)
        (micro / accum).backward()
        loss = loss + micro.detach()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.stack([g.double().pow(2).sum() for g in grads]).sum().sqrt()
    loss = loss / accum
    if t["grad_clip"] > 0:
        scale = torch.where(norm > t["grad_clip"], t["grad_clip"] / norm, 1.0)
        torch._foreach_mul_(grads, scale.float())
    for group in opt.param_groups:
        group["lr"] = learning_rate(t, step)
    if guard and not (torch.isfinite(loss) and torch.isfinite(norm)):
        return loss, norm
    opt.step()
    return loss, norm


# ---- timing, as `hgpt bench` ----


def flops_per_token(config, params):
    m, t = config["model"], config["train"]
    return 6 * params + 6 * m["n_layer"] * m["n_embd"] * t["seq_len"]


def cpu_gemm_peak_tflops(n=1024, reps=5):
    a, b = torch.rand(n, n), torch.rand(n, n)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def bench(args, config):
    m, t = config["model"], config["train"]
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda: torch sees no GPU")
    device = torch.device(args.device)
    torch.manual_seed(t["seed"])
    model = Gpt(m, bf16=cuda).to(device)
    params = sum(p.numel() for p in model.parameters())
    forward = model if args.no_compile else torch.compile(model)
    opt = optimizer(model, t, fused=cuda)
    b, seq, accum = t["batch_size"], t["seq_len"], t["grad_accum"]
    tokens = torch.randint(0, m["vocab_size"], (accum, b, seq + 1), device=device)
    micro_batches = [(tok[:, :-1], tok[:, 1:]) for tok in tokens]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for step in range(args.warmup):
        train_step(model, forward, opt, t, step, micro_batches, autocast, guard=False)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for step in range(args.warmup, args.warmup + t["max_steps"]):
        train_step(model, forward, opt, t, step, micro_batches, autocast, guard=False)
    sync()
    seconds = time.perf_counter() - t0
    steps = t["max_steps"]
    tokens_per_step = b * seq * accum
    tokens_per_s = tokens_per_step * steps / seconds
    fpt = flops_per_token(config, params)
    if args.peak_tflops:
        peak, source = args.peak_tflops, "--peak-tflops"
    elif cuda:
        peak, source = H100_BF16_TFLOPS, "H100 SXM dense bf16 (default)"
    else:
        peak, source = cpu_gemm_peak_tflops(), "measured f32 GEMM peak"
    model_tflops = fpt * tokens_per_s / 1e12
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if cuda else "fp32"
    return {
        "implementation": "torch",
        "device": f"torch {torch.__version__} {name}, {precision}"
        + ("" if args.no_compile else ", torch.compile"),
        "head": m["head"],
        "params": params,
        "micro_batch": b,
        "seq_len": seq,
        "grad_accum": accum,
        "warmup_steps": args.warmup,
        "steps": steps,
        "tokens_per_step": tokens_per_step,
        "ms_per_step": seconds * 1e3 / steps,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": fpt,
        "model_tflops": model_tflops,
        "peak_tflops": peak,
        "peak_source": source,
        "mfu": model_tflops / peak,
        # The CPU has no allocator statistics to compare; null as hgpt's JSON would be.
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


# ---- --check: the same training steps as `hgpt train` ----


def write_shard(path, tokens):
    """llm.c's format: 256 int32 header (magic, version 1, count), uint16 tokens."""
    header = torch.zeros(256, dtype=torch.int32)
    header[0], header[1], header[2] = 20240520, 1, len(tokens)
    with open(path, "wb") as f:
        f.write(header.numpy().tobytes())
        f.write(tokens.to(torch.int32).numpy().astype("<u2").tobytes())


def run_hgpt(hgpt, args):
    done = subprocess.run([hgpt, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: hgpt {' '.join(args)}: {done.stderr.strip()}")


def check(args, config):
    from safetensors.torch import load_file

    m, t = config["model"], config["train"]
    b, seq, accum, v = t["batch_size"], t["seq_len"], t["grad_accum"], m["vocab_size"]
    if v > 65536:
        sys.exit(f"error: model.vocab_size = {v}: --check writes uint16 shards (at most 65536)")
    hgpt = args.hgpt or os.path.join(REPO, "target", "release", "hgpt")
    work = tempfile.mkdtemp(prefix="torch_ref_check_")
    data = os.path.join(work, "data")
    os.makedirs(data)
    gen = torch.Generator().manual_seed(args.seed)
    windows = accum * b
    train = torch.randint(0, v, (windows * seq + 1,), generator=gen)
    write_shard(os.path.join(data, "train_000000.bin"), train)
    write_shard(os.path.join(data, "val_000000.bin"), torch.randint(0, v, (b * seq + 1,), generator=gen))
    common = ["--device", "cpu", "--data", data, "--config", args.config]
    for s in args.set + ["train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0"]:
        common += ["--set", s]
    run_hgpt(hgpt, ["train", *common, "--steps", "0", "--out", os.path.join(work, "init")])
    run_hgpt(hgpt, ["train", *common, "--steps", str(args.steps), "--out", os.path.join(work, "run")])
    # hgpt's resolved config (its --set applied by hgpt itself) defines the model here.
    with open(os.path.join(work, "run", "config.toml"), "rb") as f:
        resolved = tomllib.load(f)
    m, t = resolved["model"], resolved["train"]
    with open(os.path.join(work, "run", "metrics.jsonl")) as f:
        records = [r for r in map(json.loads, f) if r.get("train_loss") is not None and "lr" in r]

    model = Gpt(m, bf16=False)
    weights = load_file(os.path.join(work, "init", "checkpoints", "step_00000000", "model.safetensors"))
    model.load_state_dict(weights, strict=True)
    opt = optimizer(model, t, fused=False)
    # Window w is tokens [w T, w T + T]; the micro-batches in file order.
    rows = torch.stack([train[w * seq : w * seq + seq + 1] for w in range(windows)])
    micro_batches = [(r[:, :-1], r[:, 1:]) for r in rows.split(b)]
    no_autocast = torch.autocast("cpu", enabled=False)
    worst = 0.0
    print(f"{'step':>4} {'hgpt loss':>12} {'torch loss':>12} {'rel':>9} {'hgpt |g|':>12} {'torch |g|':>12} {'rel':>9}")
    for step, rec in enumerate(records):
        loss, norm = train_step(model, model, opt, t, step, micro_batches, no_autocast, guard=True)
        loss, norm = float(loss), float(norm)
        rel = abs(loss - rec["train_loss"]) / abs(rec["train_loss"])
        rel_g = abs(norm - rec["grad_norm"]) / abs(rec["grad_norm"])
        worst = max(worst, rel)
        print(f"{rec['step']:>4} {rec['train_loss']:>12.7f} {loss:>12.7f} {rel:>9.2e} "
              f"{rec['grad_norm']:>12.6f} {norm:>12.6f} {rel_g:>9.2e}")
    ok = len(records) == args.steps and worst <= args.tolerance
    head = m["head"] + ("" if m["tie_embeddings"] else ", untied")
    print(f"{head}: {len(records)} steps, worst relative loss difference {worst:.2e} "
          f"(tolerance {args.tolerance:.0e}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.toml"))
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--steps", type=int, help="timed steps (default 10), or steps checked (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--micro-batch", type=int, metavar="B", help="sequences per micro-batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--peak-tflops", type=float, metavar="X")
    p.add_argument("--no-compile", action="store_true", help="eager mode (for machines without a compiler)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="compare training steps with `hgpt train` (CPU, fp32)")
    p.add_argument("--hgpt", help="the hgpt binary for --check (default target/release/hgpt)")
    p.add_argument("--seed", type=int, default=0, help="of --check's random tokens")
    p.add_argument("--tolerance", type=float, default=1e-5)
    args = p.parse_args()
    if args.micro_batch is not None:
        if args.micro_batch < 1:
            sys.exit(f"error: --micro-batch {args.micro_batch}: must be at least 1")
        args.set.append(f"train.batch_size={args.micro_batch}")
    steps = 10 if args.steps is None else args.steps
    if steps < 1:
        sys.exit(f"error: --steps {steps}: at least one step")
    args.steps = steps
    config = load_config(args.config, args.set)
    if args.check:
        sys.exit(check(args, config))
    config["train"]["max_steps"] = steps
    report = bench(args, config)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    mem = report["peak_memory_mib"]
    print(
        f"device: {report['device']}\n{report['head']} head, {report['params'] / 1e6:.2f}M parameters; "
        f"{report['tokens_per_step']} tokens/step\n"
        f"throughput: {report['tokens_per_s']:.0f} tokens/s, {report['ms_per_step']:.1f} ms/step\n"
        f"MFU: {100 * report['mfu']:.1f}% of {report['peak_tflops']:.3f} TFLOP/s ({report['peak_source']})\n"
        f"peak memory: {'-' if mem is None else f'{mem:.0f} MiB'}"
    )


if __name__ == "__main__":
    main()
