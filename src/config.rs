//! Run configuration: TOML files with sections [model], [train] and [data].
//!
//! A file names only the keys it changes: they are laid over its `base` (a file,
//! relative to it, or "tiny"), and with no base over the built-in defaults,
//! configs/tiny.toml, which is also what `hgpt train` runs with no arguments.
//! Unknown keys and bad values are errors that name the file, line and key;
//! `--set section.key=value` overrides any key after the file is read.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::head::HeadKind;

/// configs/tiny.toml, the default when no --config is given.
pub const TINY_TOML: &str = include_str!("../configs/tiny.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    pub train: TrainConfig,
    #[serde(default)]
    pub data: DataConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadChoice {
    Harmonic,
    Softmax,
}

/// The harmonic exponent n: a number, or "sqrt" for sqrt(n_embd) as in the paper.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Exponent {
    Sqrt,
    Value(f64),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Longest context the position embedding covers.
    pub block_size: usize,
    pub vocab_size: usize,
    pub head: HeadChoice,
    pub harmonic_exponent: Exponent,
    pub harmonic_eps: f64,
    pub tie_embeddings: bool,
    pub ln_eps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub adam_eps: f64,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub grad_clip: f64,
    pub seed: u64,
    pub log_every: usize,
    /// Steps between validation passes; 0 turns them off.
    pub eval_every: usize,
    /// Micro-batches per validation pass.
    pub eval_steps: usize,
    /// Steps between checkpoints; 0 writes only the final one.
    pub checkpoint_every: usize,
    /// Checkpoints kept: the newest `keep_last`...
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// ...plus every one whose step is a multiple of `keep_every` (0: none).
    #[serde(default)]
    pub keep_every: usize,
    /// Consecutive steps with a non-finite loss or gradient norm (each skipped)
    /// after which the run stops.
    #[serde(default = "default_max_bad_steps")]
    pub max_bad_steps: usize,
    /// GEMM precision on the GPU: "bf16" (bf16 operands, fp32 master weights, moments,
    /// head math and loss), "fp32" (parity with the CPU), or "auto" (bf16 on CUDA).
    /// The CPU backend always runs fp32.
    #[serde(default)]
    pub precision: Precision,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    Fp32,
    Bf16,
}

fn default_adam_eps() -> f64 {
    1e-8
}

fn default_keep_last() -> usize {
    3
}

fn default_max_bad_steps() -> usize {
    5
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A directory prepared by `hgpt prepare`; empty for the built-in corpus.
    pub dir: String,
    /// Bytes of built-in corpus text to generate for training.
    pub builtin_train_bytes: usize,
    /// Bytes of built-in corpus text to generate for validation.
    pub builtin_val_bytes: usize,
}

impl Serialize for Exponent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Exponent::Sqrt => s.serialize_str("sqrt"),
            Exponent::Value(v) => s.serialize_f64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for Exponent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Name(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("harmonic_exponent must be a number or \"sqrt\"")
        })? {
            Raw::Number(v) => Ok(Exponent::Value(v)),
            Raw::Name(s) if s == "sqrt" => Ok(Exponent::Sqrt),
            Raw::Name(s) => Err(serde::de::Error::custom(format!(
                "harmonic_exponent must be a number or \"sqrt\", not \"{s}\""
            ))),
        }
    }
}

impl fmt::Display for HeadChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadChoice::Harmonic => "harmonic",
            HeadChoice::Softmax => "softmax",
        })
    }
}

impl ModelConfig {
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The head with its exponent resolved ("sqrt" becomes sqrt(n_embd)).
    pub fn head_kind(&self) -> HeadKind {
        match self.head {
            HeadChoice::Softmax => HeadKind::Softmax,
            HeadChoice::Harmonic => HeadKind::Harmonic {
                exponent: match self.harmonic_exponent {
                    Exponent::Sqrt => (self.n_embd as f64).sqrt() as f32,
                    Exponent::Value(v) => v as f32,
                },
                eps: self.harmonic_eps as f32,
            },
        }
    }
}

impl Config {
    /// The built-in tiny configuration.
    pub fn tiny() -> Config {
        toml::from_str(TINY_TOML).expect("built-in tiny.toml is valid")
    }

    /// Reads a config file (or the built-in tiny config when `path` is None) and
    /// applies `--set` overrides, then validates the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config> {
        Config::load_or(path, Config::tiny(), overrides)
    }

    /// As [`Config::load`], with `default` in place of the tiny config when no file
    /// is given (a resumed run starts from its checkpoint's config).
    pub fn load_or(path: Option<&Path>, default: Config, overrides: &[String]) -> Result<Config> {
        Ok(Resolved::load(path, default, overrides)?.config)
    }

    /// Applies one `section.key=value` override. The value is read as TOML (numbers,
    /// booleans, quoted strings) and otherwise taken as a bare string.
    pub fn with_override(&self, assignment: &str) -> Result<Config> {
        let (path, value) = assignment
            .split_once('=')
            .ok_or_else(|| anyhow!("--set {assignment}: expected section.key=value"))?;
        let (section, key) = path.trim().split_once('.').ok_or_else(|| {
            anyhow!("--set {assignment}: expected section.key=value (e.g. train.lr=3e-4)")
        })?;
        let value = parse_value(value.trim());
        let mut table = toml::Table::try_from(self).expect("config serializes");
        let sect = table
            .get_mut(section)
            .and_then(|s| s.as_table_mut())
            .ok_or_else(|| {
                anyhow!("--set {assignment}: unknown section `{section}` (expected model, train or data)")
            })?;
        if !sect.contains_key(key) {
            let known: Vec<&str> = sect.keys().map(|k| k.as_str()).collect();
            bail!(
                "--set {assignment}: unknown key `{section}.{key}` (known: {})",
                known.join(", ")
            );
        }
        sect.insert(key.to_string(), value);
        Config::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow!("--set {assignment}: {}", e.message().trim()))
    }

    /// Checks values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        let positive = [
            ("model.n_layer", m.n_layer),
            ("model.n_head", m.n_head),
            ("model.n_embd", m.n_embd),
            ("model.block_size", m.block_size),
            ("model.vocab_size", m.vocab_size),
            ("train.batch_size", t.batch_size),
            ("train.seq_len", t.seq_len),
            ("train.grad_accum", t.grad_accum),
            ("train.log_every", t.log_every),
            ("train.keep_last", t.keep_last),
            ("train.max_bad_steps", t.max_bad_steps),
        ];
        for (key, v) in positive {
            if v == 0 {
                bail!("{key} must be at least 1");
            }
        }
        if !m.n_embd.is_multiple_of(m.n_head) {
            bail!(
                "model.n_embd = {} is not divisible by model.n_head = {}",
                m.n_embd,
                m.n_head
            );
        }
        if t.seq_len > m.block_size {
            bail!(
                "train.seq_len = {} exceeds model.block_size = {}",
                t.seq_len,
                m.block_size
            );
        }
        if let Exponent::Value(v) = m.harmonic_exponent
            && !(v > 0.0 && v.is_finite())
        {
            bail!("model.harmonic_exponent = {v} must be a positive number (or \"sqrt\")");
        }
        let positive_floats = [
            ("model.harmonic_eps", m.harmonic_eps),
            ("model.ln_eps", m.ln_eps),
            ("train.adam_eps", t.adam_eps),
        ];
        for (key, v) in positive_floats {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{key} = {v} must be a positive number");
            }
        }
        let non_negative = [
            ("train.lr", t.lr),
            ("train.min_lr", t.min_lr),
            ("train.weight_decay", t.weight_decay),
            ("train.grad_clip", t.grad_clip),
        ];
        for (key, v) in non_negative {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("{key} = {v} must be a non-negative number");
            }
        }
        for (key, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("{key} = {v} must be in [0, 1)");
            }
        }
        if t.min_lr > t.lr {
            bail!("train.min_lr = {} exceeds train.lr = {}", t.min_lr, t.lr);
        }
        Ok(())
    }

    /// The config as TOML, as written to a run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// The multiple a vocabulary taken from the data is padded up to: llm.c's 128
/// (GPT-2's 50257 becomes 50304), so the head's GEMMs run on whole 128-wide
/// tensor-core tiles; 64 would leave 50304 the same but not every vocabulary. The
/// padding rows are classes no target names: training drives their probability
/// towards 0, as in nanoGPT and llm.c, and generation never draws them.
pub const VOCAB_MULTIPLE: usize = 128;

/// `vocab` rounded up to a multiple of [`VOCAB_MULTIPLE`].
pub fn padded_vocab(vocab: usize) -> usize {
    vocab.div_ceil(VOCAB_MULTIPLE) * VOCAB_MULTIPLE
}

/// A config with the keys that a config file (or its chain of bases) or an
/// override named, as "section.key": the rest are the built-in defaults.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub config: Config,
    pub named: BTreeSet<String>,
}

impl Resolved {
    /// The config file at `path` layered over its base (`default` when no file is
    /// given), then the `--set` overrides, validated.
    pub fn load(path: Option<&Path>, default: Config, overrides: &[String]) -> Result<Resolved> {
        let mut resolved = match path {
            None => Resolved {
                config: default,
                named: BTreeSet::new(),
            },
            Some(p) => read_file(p, &[])?,
        };
        for o in overrides {
            resolved.config = resolved.config.with_override(o)?;
            if let Some((key, _)) = o.split_once('=') {
                resolved.named.insert(key.trim().to_string());
            }
        }
        resolved.config.validate()?;
        Ok(resolved)
    }

    /// Whether a config file or an override named `key` ("section.key").
    pub fn names(&self, key: &str) -> bool {
        self.named.contains(key)
    }
}

/// Reads config file `path`, its bases resolved relative to its directory;
/// `chain` holds the (canonical) files that have it as their base.
fn read_file(path: &Path, chain: &[PathBuf]) -> Result<Resolved> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let chain = match path.canonicalize() {
        Ok(p) if !chain.contains(&p) => [chain, &[p]].concat(),
        _ => chain.to_vec(),
    };
    layer(&text, &path.display().to_string(), Some(dir), &chain)
}

/// Parses config text over the built-in defaults (configs/tiny.toml), turning
/// errors into one line naming file, line and key. Its `base` may only be "tiny":
/// text that is not a file has no directory to find a base file in.
pub fn parse(text: &str, file: &str) -> Result<Config> {
    Ok(layer(text, file, None, &[])?.config)
}

/// Config text as layers: its `base` (the built-in defaults unless it names
/// "tiny" or a file, relative to `dir`), with each key the text sets put over it.
/// Each key is checked as it is put, so an error names its line.
fn layer(text: &str, file: &str, dir: Option<&Path>, chain: &[PathBuf]) -> Result<Resolved> {
    let at = |span: std::ops::Range<usize>| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        format!("{file}:{line}")
    };
    let doc = toml::de::DeTable::parse(text).map_err(|e| {
        let msg = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => anyhow!("{}: {msg}", at(span)),
            None => anyhow!("{file}: {msg}"),
        }
    })?;
    let values: toml::Table =
        toml::from_str(text).map_err(|e| anyhow!("{file}: {}", e.message().trim()))?;
    let mut resolved = match values.get("base") {
        None => Resolved {
            config: Config::tiny(),
            named: BTreeSet::new(),
        },
        Some(toml::Value::String(b)) if b == "tiny" => Resolved {
            config: Config::tiny(),
            named: BTreeSet::new(),
        },
        Some(toml::Value::String(b)) => {
            let line = at(doc.get_ref().get("base").expect("parsed").span());
            let Some(dir) = dir else {
                bail!(
                    "{line}: base = \"{b}\": only \"tiny\" can be a base here (not a config file)"
                );
            };
            let path = dir.join(b);
            let canonical = path.canonicalize().map_err(|e| {
                anyhow!(
                    "{line}: base = \"{b}\": cannot read {}: {e}",
                    path.display()
                )
            })?;
            if chain.contains(&canonical) {
                bail!(
                    "{line}: base = \"{b}\": a cycle ({} is its own base)",
                    path.display()
                );
            }
            // The base's own errors name its file and line.
            read_file(&path, chain)?
        }
        Some(_) => {
            let line = at(doc.get_ref().get("base").expect("parsed").span());
            bail!("{line}: base must be \"tiny\" or a config file's path");
        }
    };
    let mut table = toml::Table::try_from(&resolved.config).expect("config serializes");
    for (name, section) in doc.get_ref() {
        let name_str: &str = name.get_ref();
        if name_str == "base" {
            continue;
        }
        let line = at(name.span());
        let Some(toml::Value::Table(keys)) = values.get(name_str) else {
            bail!(
                "{line}: unknown key `{name_str}` (a config has `base` and sections [model], [train], [data])"
            );
        };
        if !table.get(name_str).is_some_and(toml::Value::is_table) {
            bail!("{line}: unknown section `[{name_str}]` (expected [model], [train] or [data])");
        }
        let toml::de::DeValue::Table(spans) = section.get_ref() else {
            unreachable!("a table parses as a table")
        };
        for (key, value) in keys {
            let span = spans
                .iter()
                .find(|(k, _)| k.get_ref() == key)
                .map_or(section.span(), |(k, _)| k.span());
            let line = at(span);
            let sect = table[name_str].as_table_mut().expect("checked above");
            if !sect.contains_key(key) {
                let known: Vec<&str> = sect.keys().map(String::as_str).collect();
                bail!(
                    "{line}: unknown key `{name_str}.{key}` (known: {})",
                    known.join(", ")
                );
            }
            sect.insert(key.clone(), value.clone());
            resolved.config = Config::deserialize(toml::Value::Table(table.clone()))
                .map_err(|e| anyhow!("{line}: {name_str}.{key}: {}", e.message().trim()))?;
            resolved.named.insert(format!("{name_str}.{key}"));
        }
    }
    Ok(resolved)
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}
