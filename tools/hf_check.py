#!/usr/bin/env python3
"""Check an `hgpt export` against the transformers library.

    python tools/hf_check.py DIR TEXTFILE [--checkpoint CKPT] [--prompt TEXT]...

Loads DIR with transformers (trust_remote_code for a harmonic export), prints
the mean loss over TEXTFILE scored as `hgpt eval` scores it (an end-of-text
token, then the text; windows of the model's context, `--stride` apart, each
token scored once), and a greedy continuation of each prompt. For a harmonic
export it also checks the custom code's training loss against the harmonic
loss computed here from the formula, and that it backpropagates.

The model computes in float32 whatever the dtype its weights are stored in, so
that the only difference from hgpt's f32 reference is the rounding of the
weights. With --checkpoint it runs `hgpt eval --json` and
`hgpt generate --temperature 0` (on the CPU, hgpt's f32 reference) on that
checkpoint too and exits 1 unless the losses agree within --tolerance (1e-4
nats, for float32 arithmetic) plus, for a bf16 or f16 export, the weight
rounding bound below, and every generation is identical.

Weight rounding bound. Rounding to nearest gives each stored weight
w~_i = w_i + d_i with |d_i| <= u |w_i| (bf16: u = 2^-8, 8 significant bits;
f16: u = 2^-11, and |d_i| <= 2^-25 below f16's normal range, 2^-14). To first
order the loss moves by sum_i g_i d_i, g = dL/dw, so

    |L(w~) - L(w)| <= u * sum_i |g_i w_i|  (+ 2^-25 * sum_i |g_i| for f16)

with g and w taken at the export (the difference is second order in u). That
worst case (every error aligned with its gradient) is what the tolerance adds;
the check also prints the typical size, u * sqrt(sum_i (g_i w_i)^2 / 3), of
independent uniform errors. A half-precision export's generations are compared
with hgpt's on the same rounded weights (`hgpt import` of the export), since a
greedy argmax may legitimately flip between the f32 and the rounded model.

Needs torch and transformers (pip install torch transformers); no network.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer


def windows(n, context, stride):
    """hgpt's evaluation windows over n tokens: (start, length, scored targets)."""
    last = n - 1
    length = min(context, last)
    out, start, scored_to = [], 0, 0
    while True:
        end = start + length
        out.append((start, length, end - scored_to))
        scored_to = end
        if end == last:
            return out
        start = min(start + stride, last - length)


def scored_nats(model, tokens, stride, batch=8):
    """For each batch of hgpt's evaluation windows over tokens: the nats of the
    targets the windows score (a float64 tensor, differentiable) and their count."""
    context = model.config.n_positions
    ws = windows(len(tokens), context, stride)
    length = ws[0][1]
    ids = torch.tensor(tokens)
    for i in range(0, len(ws), batch):
        chunk = ws[i : i + batch]
        inputs = torch.stack([ids[s : s + length] for s, _, _ in chunk])
        targets = torch.stack([ids[s + 1 : s + length + 1] for s, _, _ in chunk])
        logits = model(inputs).logits.float()
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        scored = [n for _, _, n in chunk]
        yield sum(row[length - n :].sum() for row, n in zip(losses.double(), scored)), sum(scored)


@torch.no_grad()
def mean_loss(model, tokens, stride):
    nats, count = 0.0, 0
    for n, c in scored_nats(model, tokens, stride):
        nats += n.item()
        count += c
    return nats / count, count


def encode(tokenizer, text):
    """Token ids of text read as plain text, as hgpt encodes it: no special tokens
    added, and a literal "<|endoftext|>" spelled out rather than the separator."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)
    return ids["input_ids"]


def prompt_tokens(tokenizer, prompt, cfg, max_new):
    """The prompt's tokens as `hgpt generate` makes them, and how many new tokens
    fit in the context (transformers' GPT-2 cannot go past n_positions)."""
    ids = encode(tokenizer, prompt)
    ids = ids or [cfg.eos_token_id]  # an empty prompt starts a document
    return ids, min(max_new, cfg.n_positions - len(ids))


@torch.no_grad()
def greedy(model, tokenizer, prompt, ids, max_new):
    """Greedy continuation as `hgpt generate --temperature 0` prints it."""
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new,
        do_sample=False,
    )[0, len(ids) :].tolist()
    return prompt + tokenizer.decode(out, skip_special_tokens=True)


def check_harmonic_training(model, tokens):
    """The model's loss equals the harmonic loss of docs/DESIGN.md section 3, computed
    here from the tensors, and its gradients are finite."""
    cfg = model.config
    ids = torch.tensor([tokens[: min(len(tokens), cfg.n_positions)]])
    model.train()
    out = model(ids, labels=ids)
    out.loss.backward()
    hidden = model.transformer(ids).last_hidden_state[0, :-1].float()
    centres = model.lm_head.weight.float()
    s = torch.cdist(hidden.double(), centres.double()).square().clamp_min(cfg.harmonic_eps)
    p = s.pow(-cfg.harmonic_exponent / 2)
    p = p / p.sum(-1, keepdim=True)
    expected = -p[torch.arange(len(hidden)), ids[0, 1:]].log().mean().item()
    grads_finite = all(
        q.grad is None or torch.isfinite(q.grad).all() for q in model.parameters()
    )
    model.zero_grad()
    model.eval()
    return out.loss.item(), expected, grads_finite


# Unit roundoff and the largest error below the normal range, per stored dtype.
ROUNDING = {"bfloat16": (2.0**-8, 0.0), "float16": (2.0**-11, 2.0**-25)}


def stored_dtype(directory):
    """The dtype config.json says the weights are stored in."""
    with open(os.path.join(directory, "config.json")) as f:
        raw = json.load(f)
    return raw.get("dtype") or raw.get("torch_dtype") or "float32"


def rounding_bound(model, tokens, stride, dtype):
    """(worst-case, typical) first-order change of the mean loss from rounding
    the weights to `dtype` (see the module's docstring); (0, 0) for float32."""
    if dtype not in ROUNDING:
        return 0.0, 0.0
    u, floor = ROUNDING[dtype]
    count = sum(scored for _, _, scored in windows(len(tokens), model.config.n_positions, stride))
    model.zero_grad()
    for nats, _ in scored_nats(model, tokens, stride):
        (nats / count).backward()
    worst, square = 0.0, 0.0
    with torch.no_grad():
        for p in model.parameters():  # each tensor once, tied ones included
            gw = (p.grad.double() * p.double()).abs()
            worst += u * gw.sum().item() + floor * p.grad.double().abs().sum().item()
            square += (u * gw).square().sum().item() / 3
    model.zero_grad()
    return worst, math.sqrt(square)


def run_hgpt(binary, *args, on_cpu=True):
    # On the CPU: hgpt's f32 reference, which transformers' f32 should match.
    device = ["--device", "cpu"] if on_cpu else []
    done = subprocess.run([binary, *args, *device], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="an `hgpt export` directory")
    ap.add_argument("text", help="UTF-8 text file to score")
    ap.add_argument("--stride", type=int, help="window stride (default: the context)")
    ap.add_argument("--prompt", action="append", help="prompt to continue (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--checkpoint", help="compare with `hgpt eval`/`generate` on this")
    ap.add_argument("--hgpt", default="target/release/hgpt", help="the hgpt binary")
    ap.add_argument(
        "--tolerance", type=float, default=1e-4, help="nats, for f32 arithmetic"
    )
    args = ap.parse_args()

    dtype = stored_dtype(args.dir)
    # float32 arithmetic whatever the stored dtype, as hgpt's reference computes.
    model = AutoModelForCausalLM.from_pretrained(
        args.dir, trust_remote_code=True, dtype=torch.float32
    )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.dir, trust_remote_code=True)
    cfg = model.config
    print(
        f"model: {type(model).__name__}, {model.num_parameters()} parameters, "
        f"stored as {dtype}, computed in {model.dtype}"
    )

    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    tokens = [cfg.eos_token_id] + encode(tokenizer, text)
    stride = args.stride or cfg.n_positions
    loss, count = mean_loss(model, tokens, stride)
    print(f"transformers loss {loss:.6f} nats/token | perplexity {math.exp(loss):.3f} | {count} tokens")

    ok = True
    if cfg.model_type == "harmonic_gpt2":
        got, expected, finite = check_harmonic_training(model, tokens)
        good = abs(got - expected) < 1e-4 and finite
        ok &= good
        print(
            f"harmonic training loss {got:.6f}, from the formula {expected:.6f}, "
            f"gradients finite: {finite} -> {'ok' if good else 'MISMATCH'}"
        )

    prompts = [
        (p, *prompt_tokens(tokenizer, p, cfg, args.max_new_tokens))
        for p in args.prompt or ["", "The "]
    ]
    generations = [greedy(model, tokenizer, p, ids, n) for p, ids, n in prompts]
    for (p, _, _), g in zip(prompts, generations):
        print(f"greedy {p!r}: {g!r}")

    if args.checkpoint:
        worst, typical = rounding_bound(model, tokens, stride, dtype)
        tolerance = args.tolerance + worst
        if dtype in ROUNDING:
            print(
                f"{'bf16' if dtype == 'bfloat16' else 'f16'} weight rounding bound "
                f"{worst:.3e} nats (typical {typical:.1e}); tolerance "
                f"{args.tolerance:.1e} + {worst:.3e} = {tolerance:.3e}"
            )
        eval_args = ["eval", "--checkpoint", args.checkpoint, "--data", args.text, "--json"]
        if args.stride:
            eval_args += ["--stride", str(args.stride)]
        report = json.loads(run_hgpt(args.hgpt, *eval_args))
        diff = abs(report["loss"] - loss)
        good = diff <= tolerance and report["tokens"] == count
        ok &= good
        print(
            f"hgpt eval loss {report['loss']:.6f} ({report['tokens']} tokens): "
            f"difference {diff:.2e} nats -> {'ok' if good else 'MISMATCH'}"
        )
        scratch = tempfile.TemporaryDirectory()
        reference = args.checkpoint
        if dtype in ROUNDING:
            reference = os.path.join(scratch.name, "imported")
            run_hgpt(args.hgpt, "import", "--hf", args.dir, "--out", reference, on_cpu=False)
            print(f"generations compared with hgpt on the {dtype} weights (an import of {args.dir})")
        for (p, _, n), g in zip(prompts, generations):
            gen_args = ["generate", "--checkpoint", reference, "--prompt", p]
            gen_args += ["--temperature", "0", "--max-new-tokens", str(n)]
            theirs = run_hgpt(args.hgpt, *gen_args).removesuffix("\n")
            good = theirs == g
            ok &= good
            print(f"hgpt generate {p!r}: {'identical' if good else 'MISMATCH: ' + repr(theirs)}")
    print("all checks passed" if ok else "CHECK FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
