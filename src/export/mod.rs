//! Hugging Face export and import.
//!
//! An export directory is what `transformers` loads with `from_pretrained`:
//! `model.safetensors` under GPT-2's names and layouts ([`names`]), `config.json`
//! and `generation_config.json` ([`hf_config`]), the tokenizer with its
//! tokenizer_config.json, a model card README.md ([`card`]), and for the harmonic
//! head the Python code of `HarmonicGPT2LMHeadModel` ([`python`]). A softmax model
//! is a plain `GPT2LMHeadModel`. Import reads the same layout back, and any GPT-2 a
//! user has in safetensors: f32 export and import give back the parameters bit for
//! bit.

pub mod card;
pub mod hf_config;
pub mod names;
pub mod python;
pub mod tensors;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use safetensors::SafeTensors;

use crate::checkpoint::{self, Checkpoint};
use crate::config::{Config, HeadChoice, ModelConfig};
use crate::data::tokenizer::Tokenizer;
use crate::model::ParamLayout;
use crate::train::metrics;
pub use hf_config::HfConfig;
use names::FileName;
pub use tensors::Dtype;
use tensors::Encoded;

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub use crate::data::tokenizer::TOKENIZER_FILE;
pub const CARD_FILE: &str = "README.md";
const SHARD_INDEX_FILE: &str = "model.safetensors.index.json";

/// A model read from a Hugging Face directory.
pub struct HfModel {
    pub config: HfConfig,
    /// Parameters in hgpt's flat layout (`ParamLayout::new(&config.model)`).
    pub params: Vec<f32>,
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON serializes") + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// What `hgpt export` writes besides the model: the weights' precision and the
/// model card's metadata.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub dtype: Dtype,
    /// A Hub license identifier for the card (`mit`, `apache-2.0`, ...).
    pub license: Option<String>,
    /// Hub dataset ids the model was trained on, for the card.
    pub datasets: Vec<String>,
}

/// `hgpt export`: the checkpoint at `checkpoint` (a step or run directory) as a
/// Hugging Face directory `out`, with its model card. Returns a line for the user.
pub fn export_checkpoint(checkpoint: &Path, out: &Path, opts: &ExportOptions) -> Result<String> {
    card::check_metadata(opts.license.as_deref(), &opts.datasets)?;
    checkpoint::guard::check_output("--out", out, &[checkpoint])?;
    let ckpt = Checkpoint::open(checkpoint)?;
    let model = &ckpt.state.config.model;
    let params = ckpt.read_params()?;
    let dtype = opts.dtype;
    // Token shards that came without a tokenizer (llm.c's) leave none to export.
    let tokenizer = match ckpt.state.tokenizer_hash {
        Some(_) => Some(checkpoint::tokenizer::load(&ckpt)?),
        None => None,
    };
    let (train_loss, val_loss) = final_losses(&ckpt)?;
    let name = std::path::absolute(out)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "hgpt model".to_string());
    write_fresh(out, |dir| {
        match &tokenizer {
            Some(tok) => export(dir, model, &params, tok, dtype)?,
            None => write_model(dir, model, &params, dtype, None)?,
        }
        let text = card::model_card(&card::CardFacts {
            name: &name,
            config: &ckpt.state.config,
            params: params.len(),
            dtype,
            step: ckpt.state.step,
            train_loss,
            val_loss,
            tokenizer: tokenizer.as_ref(),
            license: opts.license.as_deref(),
            datasets: &opts.datasets,
        });
        let card_path = dir.join(CARD_FILE);
        std::fs::write(&card_path, text)
            .with_context(|| format!("cannot write {}", card_path.display()))
    })?;
    let what = match tokenizer {
        Some(_) => format!("{} head", model.head),
        None => format!(
            "{} head; the checkpoint has no tokenizer, so none was written",
            model.head
        ),
    };
    Ok(format!(
        "exported {} ({what}) to {} ({dtype}, model card {CARD_FILE})",
        ckpt.dir.display(),
        out.display()
    ))
}

/// Runs `write` into a fresh directory beside `out`, then puts that directory in
/// `out`'s place: an earlier export there is replaced whole, never mixed with the
/// new files. Refuses an `out` that holds files but no export.
fn write_fresh(out: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let Some(name) = std::path::absolute(out)?.file_name().map(|n| n.to_owned()) else {
        bail!("--out {}: names no directory", out.display());
    };
    let name = name.to_string_lossy();
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_none();
        if !empty && !out.join(CONFIG_FILE).is_file() {
            bail!(
                "--out {}: holds files but no export ({CONFIG_FILE}); pick another --out",
                out.display()
            );
        }
    }
    let parent = checkpoint::atomic::parent_dir(out);
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let pid = std::process::id();
    let fresh = parent.join(format!(".tmp-export-{name}-{pid}"));
    let old = parent.join(format!(".old-export-{name}-{pid}"));
    let _ = std::fs::remove_dir_all(&fresh);
    if let Err(e) = write(&fresh) {
        let _ = std::fs::remove_dir_all(&fresh);
        return Err(e);
    }
    if out.exists() {
        std::fs::rename(out, &old)
            .with_context(|| format!("cannot move aside {}", out.display()))?;
    }
    std::fs::rename(&fresh, out)
        .with_context(|| format!("cannot rename {} to {}", fresh.display(), out.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// A loss and the step it was logged at, when there is one.
type LossAt = Option<(usize, f64)>;

/// The last training loss and validation loss logged at or before the
/// checkpoint's step, from its run's metrics.jsonl (none for a checkpoint
/// outside a run, such as an import).
fn final_losses(ckpt: &Checkpoint) -> Result<(LossAt, LossAt)> {
    let run = ckpt
        .dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))
        .and_then(Path::parent);
    let Some(path) = run.map(|r| r.join("metrics.jsonl")).filter(|p| p.is_file()) else {
        return Ok((None, None));
    };
    let metrics::Records { train, eval, .. } = metrics::read_records(&path, ckpt.state.step)?;
    let train = train
        .iter()
        .max_by_key(|r| r.step)
        .map(|r| (r.step, r.train_loss));
    let eval = eval
        .iter()
        .max_by_key(|r| r.step)
        .map(|r| (r.step, r.val_loss));
    Ok((train, eval))
}

/// `hgpt import`: the Hugging Face directory `hf` as the checkpoint directory `out`
/// (model and tokenizer; see [`checkpoint::save_model`]). Returns a line for the user.
pub fn import_checkpoint(hf: &Path, out: &Path) -> Result<String> {
    // Before reading what may be gigabytes (save_model refuses it too).
    checkpoint::guard::check_output("--out", out, &[hf])?;
    if out.exists() {
        bail!("{}: already exists; pick another --out", out.display());
    }
    let (model, tokenizer) = import(hf)?;
    let m = model.config.model;
    // A model holding NaN or infinity would train and generate nothing but that.
    if let Some(i) = model.params.iter().position(|x| !x.is_finite()) {
        let layout = ParamLayout::new(&m);
        let t = layout
            .tensors
            .iter()
            .find(|t| (t.offset..t.offset + t.len()).contains(&i))
            .expect("the layout covers every parameter");
        let layer_len = t.layer_len().max(1);
        let bad = model.params.iter().filter(|x| !x.is_finite()).count();
        bail!(
            "{}: {bad} weights are not finite, the first ({}) in {}: refusing to import it",
            hf.display(),
            model.params[i],
            t.name
                .replace("{}", &((i - t.offset) / layer_len).to_string())
        );
    }
    // The run config the checkpoint records: hgpt's defaults for training, with
    // sequences no longer than the model's context. `train --init` overrides them.
    let mut config = Config::tiny();
    config.train.seq_len = config.train.seq_len.min(m.block_size);
    config.model = m;
    config
        .validate()
        .map_err(|e| anyhow!("{}: {e:#}", hf.join(CONFIG_FILE).display()))?;
    checkpoint::save_model(out, &config, &model.params, &tokenizer)?;
    let m = &config.model;
    Ok(format!(
        "imported {} ({} head, {} layers, {} channels, vocab {}, {:.2}M parameters) into {}",
        hf.display(),
        m.head,
        m.n_layer,
        m.n_embd,
        m.vocab_size,
        model.params.len() as f64 / 1e6,
        out.display()
    ))
}

/// Writes a whole export into `dir`: the model files and the tokenizer, so that
/// `from_pretrained(dir)` loads both.
pub fn export(
    dir: &Path,
    config: &ModelConfig,
    params: &[f32],
    tokenizer: &Tokenizer,
    dtype: Dtype,
) -> Result<()> {
    write_model(dir, config, params, dtype, Some(tokenizer.eot()))?;
    tokenizer.save_for_transformers(dir, Some(config.block_size))
}

/// Writes the model files of an export into `dir` (created if needed): weights in
/// `dtype`, config.json, generation_config.json and, for the harmonic head, its
/// Python code. `eot` is the end-of-text id, GPT-2's bos and eos.
pub fn write_model(
    dir: &Path,
    config: &ModelConfig,
    params: &[f32],
    dtype: Dtype,
    eot: Option<u32>,
) -> Result<()> {
    let layout = ParamLayout::new(config);
    assert_eq!(params.len(), layout.total, "parameters match the config");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tensors: Vec<(String, Encoded)> = names::hf_tensors(&layout)
        .into_iter()
        .map(|t| {
            let values = t.from_hgpt(params);
            (t.name, Encoded::new(&values, t.shape, dtype))
        })
        .collect();
    tensors::write(&dir.join(MODEL_FILE), &tensors)?;
    write_json(
        &dir.join(CONFIG_FILE),
        &hf_config::config_json(config, eot, dtype),
    )?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &hf_config::generation_config_json(eot),
    )?;
    if config.head == HeadChoice::Harmonic {
        for (name, text) in python::FILES {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// Reads a whole Hugging Face directory: the model (see [`read_model`]) and its
/// tokenizer, tokenizer.json or else GPT-2's vocab.json and merges.txt.
pub fn import(dir: &Path) -> Result<(HfModel, Tokenizer)> {
    let model = read_model(dir)?;
    let json = dir.join(TOKENIZER_FILE);
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    let tokenizer = if json.is_file() {
        Tokenizer::from_file(&json)?
    } else if vocab.is_file() && merges.is_file() {
        Tokenizer::gpt2_bpe(&vocab, &merges)?
    } else {
        bail!(
            "{}: no {TOKENIZER_FILE} (nor GPT-2's vocab.json and merges.txt)",
            dir.display()
        );
    };
    let m = &model.config.model;
    if tokenizer.vocab_size() > m.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens, more than config.json's vocab_size {}",
            dir.display(),
            tokenizer.vocab_size(),
            m.vocab_size
        );
    }
    if let Some(eot) = model.config.eot.filter(|&e| e != tokenizer.eot()) {
        bail!(
            "{}: config.json's eos_token_id {eot} is not the tokenizer's end-of-text token {}",
            dir.display(),
            tokenizer.eot()
        );
    }
    Ok((model, tokenizer))
}

/// Reads a `GPT2LMHeadModel` (or `GPT2Model`) in safetensors, or an hgpt harmonic
/// export, from `dir`. Errors name the file and the key or tensor at fault.
pub fn read_model(dir: &Path) -> Result<HfModel> {
    let model_path = dir.join(MODEL_FILE);
    if !model_path.is_file() {
        if dir.join(SHARD_INDEX_FILE).is_file() {
            bail!(
                "{}: sharded checkpoints are not supported (found {SHARD_INDEX_FILE}); \
                 save the model as one {MODEL_FILE}",
                dir.display()
            );
        }
        bail!("{}: no {MODEL_FILE}", dir.display());
    }
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = hf_config::parse(&text, &config_path.display().to_string())?;
    let file = model_path.display().to_string();
    let bytes = std::fs::read(&model_path).with_context(|| format!("cannot read {file}"))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{file}: not a safetensors file ({e})"))?;
    let params = load_params(&st, &config.model, &file)?;
    Ok(HfModel { config, params })
}

/// Places every tensor of `st` into hgpt's layout for `m`, checking that each
/// expected tensor is there exactly once, with the right shape, and nothing else.
fn load_params(st: &SafeTensors<'_>, m: &ModelConfig, file: &str) -> Result<Vec<f32>> {
    let layout = ParamLayout::new(m);
    let expected = names::hf_tensors(&layout);
    let by_name: HashMap<&str, &names::HfTensor> =
        expected.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut params = vec![0f32; layout.total];
    let mut found: HashMap<String, &str> = HashMap::new();
    let mut tied_head = None;
    let sizes = format!(
        "config.json: n_layer {}, n_embd {}, vocab_size {}, n_positions {}",
        m.n_layer, m.n_embd, m.vocab_size, m.block_size
    );
    for (file_name, view) in st.iter() {
        let name = match names::classify(file_name) {
            FileName::Buffer => continue,
            FileName::Unknown(n) => bail!("{file}: unknown tensor `{n}` (not part of GPT-2)"),
            FileName::Param(n) => n,
        };
        let what = format!("{file}: tensor `{file_name}`");
        if let Some(first) = found.insert(name.clone(), file_name) {
            bail!("{what} duplicates `{first}`");
        }
        if name == "lm_head.weight" && m.tie_embeddings {
            // Some writers store the tied head too; it must then be the embedding.
            tied_head = Some((
                to_f32_checked(&view, &[m.vocab_size, m.n_embd], &what, &sizes)?,
                what,
            ));
            continue;
        }
        let Some(t) = by_name.get(name.as_str()) else {
            bail!("{what} does not fit the model ({sizes})");
        };
        let values = to_f32_checked(&view, &t.shape, &what, &sizes)?;
        t.to_hgpt(&values, &mut params);
    }
    if let Some(t) = expected.iter().find(|t| !found.contains_key(&t.name)) {
        bail!("{file}: missing tensor `{}`", t.name);
    }
    if let Some((head, what)) = tied_head {
        let wte = &layout.tensors[crate::model::idx::WTE];
        if head != params[wte.offset..wte.offset + wte.len()] {
            bail!(
                "{what} differs from transformer.wte.weight, but config.json ties them \
                 (tie_word_embeddings is true or absent)"
            );
        }
    }
    Ok(params)
}

/// A tensor's values widened to f32, once its shape is checked against `shape`.
fn to_f32_checked(
    view: &safetensors::tensor::TensorView<'_>,
    shape: &[usize],
    what: &str,
    sizes: &str,
) -> Result<Vec<f32>> {
    if view.shape() != shape {
        bail!(
            "{what} has shape {:?}, expected {shape:?} ({sizes})",
            view.shape()
        );
    }
    tensors::to_f32(view, what)
}
