#!/usr/bin/env python3
"""`hgpt export` and `hgpt prepare` output checked with transformers.

    python tools/test_hf_export.py [--hgpt target/release/hgpt] [-v]

Trains tiny hgpt runs (harmonic head tied and untied, softmax head), exports
them and prepares a small corpus, then checks with transformers that:

- the harmonic head stays harmonic through every API that rebuilds `lm_head`
  (get/set_output_embeddings, _get_resized_lm_head, resize_token_embeddings,
  tie_weights), and a resized model saves and reloads as it was;
- loading a harmonic export as a plain GPT2LMHeadModel is flagged by
  transformers and gives wrong logits, and the model card's first lines say so;
- AutoModel loads the harmonic trunk (feature extraction);
- AutoTokenizer loads the export's and prepare's tokenizers without remote code
  (and, with no trust_remote_code argument, in a script without waiting on the
  question transformers asks an interactive session), with the same special-token roles, a pad token, and a literal <|endoftext|>
  encoded as text, as hgpt encodes it;
- config.json names the weights' dtype under `dtype`;
- tools/hf_check.py passes on a bf16 export within its stated bound.

`cargo test --release --test hf_python` runs this. Without torch and
transformers it prints a line starting SKIPPED and exits 0: nothing was checked.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest
import warnings

try:
    import torch
    import transformers
    from torch import nn
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoTokenizer,
        GPT2LMHeadModel,
    )
except ImportError as e:
    print(f"SKIPPED: torch/transformers not installed ({e}); no transformers check ran")
    sys.exit(0)

HGPT = "target/release/hgpt"
ROOT = None  # the temporary directory holding the runs and exports
EOT = "<|endoftext|>"
TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.harmonic_exponent=32",
    "model.block_size=32",
    "train.seq_len=32",
    "train.batch_size=4",
    "train.warmup_steps=0",
    "train.log_every=1",
    "train.eval_every=3",
    "train.eval_steps=2",
    "train.checkpoint_every=0",
    "data.builtin_train_bytes=20000",
    "data.builtin_val_bytes=4000",
]
# name: --set overrides of the run
RUNS = {
    "harmonic_tied": ["model.head=harmonic", "model.tie_embeddings=true"],
    "harmonic_untied": ["model.head=harmonic", "model.tie_embeddings=false"],
    "softmax": ["model.head=softmax", "model.tie_embeddings=true"],
}


def hgpt(*args):
    done = subprocess.run([HGPT, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"hgpt {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def path(*parts):
    return os.path.join(ROOT, *parts)


def setUpModule():
    for name, sets in RUNS.items():
        args = ["train", "--steps", "3", "--out", f"run_{name}", "--device", "cpu"]
        for s in TINY + sets:
            args += ["--set", s]
        hgpt(*args)
        hgpt("export", "--checkpoint", f"run_{name}", "--out", f"hf_{name}")
    hgpt("export", "--checkpoint", "run_harmonic_untied", "--out", "hf_bf16", "--dtype", "bf16")
    with open(path("corpus.txt"), "w") as f:
        f.write("\n<|endoftext|>\n".join(f"Document {i}: the cat sat on the mat." for i in range(20)))
    hgpt("prepare", "--input", "corpus.txt", "--out", "prep_bytes")
    hgpt("prepare", "--input", "corpus.txt", "--out", "prep_bpe", "--train-tokenizer", "300")


def load(name, **kw):
    model = AutoModelForCausalLM.from_pretrained(path(name), trust_remote_code=True, **kw)
    return model.eval()


def ids(vocab, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, n), generator=g)


@torch.no_grad()
def formula_logits(model, tokens):
    """z_i = -(n/2) ln max(|h - w_i|^2, eps), from the trunk's hidden states and
    the head's centres, in float64."""
    cfg = model.config
    h = model.transformer(tokens).last_hidden_state.double()
    w = model.lm_head.weight.double()
    s = torch.cdist(h, w.expand(h.shape[0], *w.shape)).square().clamp_min(cfg.harmonic_eps)
    return -(cfg.harmonic_exponent / 2) * s.log()


def is_harmonic_head(module):
    return type(module).__name__ == "HarmonicHead"


@torch.no_grad()
def logits(model, tokens):
    return model(tokens).logits.double()


class HarmonicHeadThroughLmHeadApis(unittest.TestCase):
    def check_harmonic(self, model, tokens, what):
        self.assertTrue(is_harmonic_head(model.get_output_embeddings()), what)
        got, want = logits(model, tokens), formula_logits(model, tokens)
        self.assertLess((got - want).abs().max().item(), 1e-3, what)

    def test_get_output_embeddings_is_the_harmonic_head(self):
        for name in ("harmonic_tied", "harmonic_untied"):
            model = load(f"hf_{name}")
            self.check_harmonic(model, ids(model.config.vocab_size), name)

    def test_set_output_embeddings_wraps_a_linear_in_the_harmonic_head(self):
        model = load("hf_harmonic_untied")
        tokens = ids(model.config.vocab_size)
        before = logits(model, tokens)
        linear = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
        with torch.no_grad():
            linear.weight.copy_(model.lm_head.weight)
        model.set_output_embeddings(linear)
        self.assertIs(model.lm_head.weight, linear.weight)
        self.check_harmonic(model, tokens, "set_output_embeddings")
        self.assertEqual((logits(model, tokens) - before).abs().max().item(), 0.0)
        with self.assertRaises(TypeError):
            model.set_output_embeddings(nn.Linear(model.config.n_embd, 5, bias=True))

    def test_get_resized_lm_head_is_harmonic(self):
        model = load("hf_harmonic_untied")
        v = model.config.vocab_size
        head = model._get_resized_lm_head(model.lm_head, v + 5)
        self.assertTrue(is_harmonic_head(head))
        self.assertEqual(head.weight.shape[0], v + 5)
        self.assertTrue(torch.equal(head.weight[:v], model.lm_head.weight))
        self.assertEqual(head.exponent, model.config.harmonic_exponent)

    def test_resize_token_embeddings_keeps_the_head_and_saves_as_it_is(self):
        for name in ("harmonic_tied", "harmonic_untied"):
            model = load(f"hf_{name}")
            v = model.config.vocab_size
            tokens = ids(v)
            before = logits(model, tokens)
            model.resize_token_embeddings(v + 7)
            self.assertEqual(model.config.vocab_size, v + 7)
            self.check_harmonic(model, tokens, name)
            after = logits(model, tokens)
            # Each logit depends on its own centre only: the old tokens' are kept.
            self.assertLess((after[..., :v] - before).abs().max().item(), 1e-4, name)
            tied = model.lm_head.weight is model.transformer.wte.weight
            self.assertEqual(tied, name == "harmonic_tied")
            with tempfile.TemporaryDirectory() as d:
                model.save_pretrained(d)
                back = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
            self.check_harmonic(back, tokens, name)
            self.assertEqual((logits(back, tokens) - after).abs().max().item(), 0.0, name)

    def test_tie_weights_keeps_the_head(self):
        for name in ("harmonic_tied", "harmonic_untied"):
            model = load(f"hf_{name}")
            tokens = ids(model.config.vocab_size)
            before = logits(model, tokens)
            model.tie_weights()
            self.check_harmonic(model, tokens, name)
            tied = model.lm_head.weight is model.transformer.wte.weight
            self.assertEqual(tied, name == "harmonic_tied")
            self.assertEqual((logits(model, tokens) - before).abs().max().item(), 0.0)


class WrongClassIsFlagged(unittest.TestCase):
    def test_plain_gpt2_class_on_a_harmonic_export_is_flagged_and_wrong(self):
        """transformers cannot be made to refuse it (a model_type mismatch is a
        warning), so the card says in its first lines how to load the model, and
        this pins what the mistake looks like: the warning naming harmonic_gpt2,
        and logits far from the harmonic ones."""
        for name in ("harmonic_tied", "harmonic_untied"):
            with self.assertLogs("transformers.configuration_utils", "WARNING") as logs:
                plain = GPT2LMHeadModel.from_pretrained(path(f"hf_{name}")).eval()
            self.assertIn("harmonic_gpt2", "\n".join(logs.output))
            tokens = ids(plain.config.vocab_size)
            gap = (logits(plain, tokens) - logits(load(f"hf_{name}"), tokens)).abs().max()
            self.assertGreater(gap.item(), 1.0, name)
        with open(path("hf_harmonic_tied", "README.md")) as f:
            card = f.read().split("\n---\n", 1)[1]
        first = next(p for p in card.split("\n\n") if p.strip() and not p.strip().startswith("#"))
        self.assertIn("trust_remote_code=True", first)

    def test_plain_gpt2_class_loads_a_softmax_export(self):
        model = GPT2LMHeadModel.from_pretrained(path("hf_softmax")).eval()
        auto = load("hf_softmax")
        tokens = ids(model.config.vocab_size)
        self.assertTrue(torch.equal(logits(model, tokens), logits(auto, tokens)))


class TrunkLoadsAsAutoModel(unittest.TestCase):
    def test_auto_model_is_the_harmonic_trunk(self):
        lm = load("hf_harmonic_untied")
        trunk = AutoModel.from_pretrained(path("hf_harmonic_untied"), trust_remote_code=True)
        self.assertEqual(type(trunk).__name__, "HarmonicGPT2Model")
        tokens = ids(lm.config.vocab_size)
        with torch.no_grad():
            want = lm.transformer(tokens).last_hidden_state
            got = trunk.eval()(tokens).last_hidden_state
        self.assertTrue(torch.equal(got, want))


class Tokenizers(unittest.TestCase):
    def tokenizer(self, name):
        # trust_remote_code=False: the tokenizer needs none of the export's code
        # (transformers 5 reads config.json too, and falls back to a generic config).
        return AutoTokenizer.from_pretrained(path(name), trust_remote_code=False)

    def test_export_and_prepare_tokenizers_have_the_same_roles(self):
        roles = ("bos_token", "eos_token", "unk_token", "pad_token")
        for name in ("hf_harmonic_tied", "hf_softmax", "prep_bytes", "prep_bpe"):
            tok = self.tokenizer(name)
            self.assertEqual([getattr(tok, r) for r in roles], [EOT] * 4, name)

    def test_literal_end_of_text_is_encoded_as_text(self):
        text = f"a{EOT}b é"
        for name in ("hf_harmonic_tied", "prep_bytes"):
            tok = self.tokenizer(name)
            self.assertEqual(tok(text)["input_ids"], list(text.encode()), name)
        tok = self.tokenizer("prep_bpe")
        eot = tok.convert_tokens_to_ids(EOT)
        self.assertNotIn(eot, tok(text)["input_ids"])
        self.assertEqual(tok.decode(tok(text)["input_ids"]), text)

    def test_auto_tokenizer_without_the_flag_loads_in_a_script(self):
        # transformers 5 reads config.json first and, for a harmonic export, asks an
        # interactive session whether to run its code; a script is not held up.
        code = (
            "import sys; from transformers import AutoTokenizer; "
            "print(AutoTokenizer.from_pretrained(sys.argv[1])('ab')['input_ids'])"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, path("hf_harmonic_tied")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        # The question is printed without a newline, then the answer follows it.
        self.assertTrue(done.stdout.strip().endswith("[97, 98]"), done.stdout)

    def test_batches_pad_with_the_end_of_text_token(self):
        tok = self.tokenizer("hf_harmonic_tied")
        batch = tok(["a", "abc"], padding=True)
        self.assertEqual(batch["input_ids"][0], [97, 256, 256])
        self.assertEqual(batch["attention_mask"][0], [1, 0, 0])


class ConfigDtype(unittest.TestCase):
    def test_dtype_key_is_current_and_loads(self):
        with open(path("hf_bf16", "config.json")) as f:
            raw = json.load(f)
        self.assertEqual(raw.get("dtype"), "bfloat16")
        self.assertNotIn("torch_dtype", raw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = AutoConfig.from_pretrained(path("hf_bf16"), trust_remote_code=True)
        self.assertEqual(config.dtype, torch.bfloat16)
        self.assertFalse([w for w in caught if "torch_dtype" in str(w.message)])
        model = load("hf_bf16", dtype="auto")
        self.assertEqual(model.dtype, torch.bfloat16)


class HfCheckTool(unittest.TestCase):
    def test_bf16_export_passes_within_the_stated_bound(self):
        here = os.path.dirname(os.path.abspath(__file__))
        done = subprocess.run(
            [
                sys.executable,
                os.path.join(here, "hf_check.py"),
                path("hf_bf16"),
                path("corpus.txt"),
                "--checkpoint",
                path("run_harmonic_untied"),
                "--hgpt",
                HGPT,
            ],
            capture_output=True,
            text=True,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("bf16 weight rounding bound", done.stdout)
        self.assertIn("all checks passed", done.stdout)


def main():
    global HGPT, ROOT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hgpt", default=HGPT, help="the hgpt binary")
    args, rest = ap.parse_known_args()
    HGPT = os.path.abspath(args.hgpt)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory() as root:
        ROOT = root
        unittest.main(argv=[sys.argv[0], *rest], verbosity=2)


if __name__ == "__main__":
    main()
