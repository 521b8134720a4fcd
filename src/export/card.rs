//! README.md of an export: the Hugging Face model card, generated from the
//! checkpoint's own config and step and its run's metrics.jsonl.
//!
//! YAML front matter (library_name, pipeline_tag, tags, and license and
//! datasets when given) for the Hub's index, then: how to load the model (its
//! first lines, since a harmonic model loaded as a plain GPT2LMHeadModel computes
//! the wrong logits), the architecture and head, the parameter count, training
//! steps and tokens, the final train and validation losses, the tokenizer, and
//! for the harmonic head its formula,
//!
//!   z_i = -(n/2) ln max(|h - w_i|^2, eps),   p = softmax(z),   p_i ~ |h - w_i|^-n.

use std::fmt::Write;

use anyhow::{Result, bail};

use crate::config::{Config, HeadChoice};
use crate::data::tokenizer::Tokenizer;

use super::hf_config;
use super::tensors::Dtype;

/// What the card says, gathered from the checkpoint and its run.
pub struct CardFacts<'a> {
    /// The export's name (its directory's), the card's title.
    pub name: &'a str,
    pub config: &'a Config,
    pub params: usize,
    pub dtype: Dtype,
    /// Optimizer steps the checkpoint has taken (0: an import or a fresh model).
    pub step: usize,
    /// The last logged training loss and last validation loss at or before
    /// `step`, with their steps.
    pub train_loss: Option<(usize, f64)>,
    pub val_loss: Option<(usize, f64)>,
    pub tokenizer: Option<&'a Tokenizer>,
    /// A Hub license identifier (`mit`, `apache-2.0`, ...).
    pub license: Option<&'a str>,
    /// Hub dataset ids the model was trained on.
    pub datasets: &'a [String],
}

/// A license or dataset id that fits the Hub's metadata as a bare YAML scalar.
fn check_id(what: &str, id: &str, slash: bool) -> Result<()> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c) || (slash && c == '/'));
    if !ok {
        bail!(
            "{what} `{id}`: not a Hugging Face identifier (letters, digits, - . _{})",
            if slash { " and /" } else { "" }
        );
    }
    Ok(())
}

/// Checks the user-given metadata (`--license`, `--dataset`).
pub fn check_metadata(license: Option<&str>, datasets: &[String]) -> Result<()> {
    if let Some(l) = license {
        check_id("--license", l, false)?;
    }
    for d in datasets {
        check_id("--dataset", d, true)?;
    }
    Ok(())
}

/// The card's Markdown.
pub fn model_card(f: &CardFacts) -> String {
    let m = &f.config.model;
    let t = &f.config.train;
    let harmonic = m.head == HeadChoice::Harmonic;
    let mut s = String::from("---\nlibrary_name: transformers\n");
    if let Some(l) = f.license {
        writeln!(s, "license: {l}").unwrap();
    }
    s += "pipeline_tag: text-generation\ntags:\n- hgpt\n- gpt2\n";
    if harmonic {
        s += "- harmonic-loss\n- custom_code\n";
    }
    if !f.datasets.is_empty() {
        s += "datasets:\n";
        for d in f.datasets {
            writeln!(s, "- {d}").unwrap();
        }
    }
    s += "---\n\n";
    writeln!(s, "# {}\n", f.name).unwrap();

    let load = if harmonic {
        writeln!(
            s,
            "**Load with `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`.** \
             This GPT-2 has a harmonic output head, whose code ships in \
             `modeling_harmonic_gpt2.py`; `GPT2LMHeadModel.from_pretrained` would load its \
             weights under a dot-product head and compute the wrong logits.\n"
        )
        .unwrap();
        "from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer\n\n\
         model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)\n\
         # The tokenizer needs no custom code, but transformers 5 reads config.json\n\
         # for it too; trusting it here saves a prompt.\n\
         tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)\n\
         # The trunk alone (hidden states, for features):\n\
         trunk = AutoModel.from_pretrained(path, trust_remote_code=True)\n"
    } else {
        writeln!(
            s,
            "A plain GPT-2 with a softmax head: loads as `GPT2LMHeadModel` (or \
             `AutoModelForCausalLM`), no custom code.\n"
        )
        .unwrap();
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n\
         model = AutoModelForCausalLM.from_pretrained(path)\n\
         tokenizer = AutoTokenizer.from_pretrained(path)\n"
    };
    writeln!(
        s,
        "```python\n{load}\ninputs = tokenizer(\"Once upon a time\", return_tensors=\"pt\")\n\
         print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))\n```\n"
    )
    .unwrap();
    writeln!(
        s,
        "Trained with hgpt, a Rust pretraining framework, and exported by `hgpt export` \
         (hgpt {}); `hgpt import` reads this directory back.\n",
        env!("CARGO_PKG_VERSION")
    )
    .unwrap();

    s += "## Model\n\n| | |\n|---|---|\n";
    writeln!(
        s,
        "| architecture | GPT-2: {} layers, {} heads, {} channels, context {}, vocabulary {} |",
        m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size
    )
    .unwrap();
    let tied = if m.tie_embeddings {
        "tied to the token embedding"
    } else {
        "untied (its own `lm_head.weight`)"
    };
    if harmonic {
        writeln!(
            s,
            "| head | harmonic, exponent n = {}, eps = {:e}, centres {tied} |",
            hf_config::resolved_exponent(m),
            m.harmonic_eps
        )
        .unwrap();
    } else {
        writeln!(s, "| head | softmax (dot product), {tied} |").unwrap();
    }
    writeln!(
        s,
        "| parameters | {} ({:.2}M) |",
        f.params,
        f.params as f64 / 1e6
    )
    .unwrap();
    writeln!(s, "| weights | {} |\n", f.dtype).unwrap();

    s += "## Training\n\n| | |\n|---|---|\n";
    let per_step = t.batch_size * t.seq_len * t.grad_accum;
    writeln!(
        s,
        "| steps | {} |\n| tokens | {} ({} per step: batch {} x sequence {} x {} micro-batches) |",
        f.step,
        f.step * per_step,
        per_step,
        t.batch_size,
        t.seq_len,
        t.grad_accum
    )
    .unwrap();
    let loss = |l: Option<(usize, f64)>| match l {
        Some((step, v)) => format!("{v:.4} nats/token (step {step})"),
        None => "not recorded".to_string(),
    };
    writeln!(s, "| final train loss | {} |", loss(f.train_loss)).unwrap();
    writeln!(s, "| final validation loss | {} |", loss(f.val_loss)).unwrap();
    let data = if f.config.data.dir.is_empty() {
        "hgpt's built-in generated corpus".to_string()
    } else {
        format!("`{}` (prepared by `hgpt prepare`)", f.config.data.dir)
    };
    writeln!(s, "| data | {data} |").unwrap();
    writeln!(
        s,
        "| optimizer | AdamW, lr {:e} to {:e}, {} warmup steps, weight decay {}, seed {} |\n",
        t.lr, t.min_lr, t.warmup_steps, t.weight_decay, t.seed
    )
    .unwrap();

    s += "## Tokenizer\n\n";
    match f.tokenizer {
        Some(tok) => {
            let eot = tok.hf().id_to_token(tok.eot()).unwrap_or_default();
            let kind = if tok.hash() == Tokenizer::bytes().hash() {
                "hgpt's built-in byte-level tokenizer (ids 0-255 are the UTF-8 bytes)"
            } else {
                "a Hugging Face `tokenizers` tokenizer"
            };
            writeln!(
                s,
                "`tokenizer.json`: {kind}, {} tokens; `{eot}` (id {}) separates documents and \
                 is the bos, eos, unk and pad token. A literal `{eot}` in text is encoded as \
                 text (`split_special_tokens`), as hgpt encodes it. SHA-256 of the compact \
                 tokenizer.json: `{}`.\n",
                tok.vocab_size(),
                tok.eot(),
                tok.hash()
            )
            .unwrap();
        }
        None => s += "None: the model was trained on token shards that came without one.\n\n",
    }

    if harmonic {
        writeln!(
            s,
            "## The harmonic head\n\n\
             For the final hidden state h and the class centres w_i (the rows of \
             `lm_head.weight`), the model's logits are\n\n\
             ```\nz_i = -(n/2) ln max(|h - w_i|^2, eps)\n```\n\n\
             so p = softmax(z) gives p_i proportional to |h - w_i|^-n, with n = {}. \
             GPT-2's cross-entropy on z is the harmonic loss: `generate()`, perplexity code \
             and fine-tuning work unchanged. The head stays harmonic through \
             `resize_token_embeddings` and `tie_weights`.",
            hf_config::resolved_exponent(m)
        )
        .unwrap();
    }
    s
}
