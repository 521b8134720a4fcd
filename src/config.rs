//! Run configuration: TOML files with sections [model], [train] and [data].
//!
//! Unknown keys are errors that name the file, line and key; `--set section.key=value`
//! overrides any key after the file is read. configs/tiny.toml is built into the
//! binary and is what `hgpt train` runs with no arguments.

use std::fmt;
use std::path::Path;

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
        parse(TINY_TOML, "configs/tiny.toml").expect("built-in tiny.toml is valid")
    }

    /// Reads a config file (or the built-in tiny config when `path` is None) and
    /// applies `--set` overrides, then validates the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config> {
        Config::load_or(path, Config::tiny(), overrides)
    }

    /// As [`Config::load`], with `default` in place of the tiny config when no file
    /// is given (a resumed run starts from its checkpoint's config).
    pub fn load_or(path: Option<&Path>, default: Config, overrides: &[String]) -> Result<Config> {
        let mut config = match path {
            None => default,
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                parse(&text, &p.display().to_string())?
            }
        };
        for o in overrides {
            config = config.with_override(o)?;
        }
        config.validate()?;
        Ok(config)
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

/// Parses config text, turning serde errors into one line naming file, line and key.
pub fn parse(text: &str, file: &str) -> Result<Config> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().trim().replace('\n', " ");
        let Some(span) = e.span() else {
            return anyhow!("{file}: {msg}");
        };
        let line = text[..span.start].matches('\n').count() + 1;
        let key = &text[span.clone()];
        // An unknown name in a header line is a section, not a key.
        let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
        let line_text = text[line_start..].lines().next().unwrap_or("").trim();
        if msg.starts_with("unknown field") && line_text.starts_with('[') {
            let header = line_text.trim_start_matches('[').split(']').next();
            return anyhow!(
                "{file}:{line}: unknown section `[{}]` (expected [model], [train] or [data])",
                header.unwrap_or_default().trim()
            );
        }
        // Name unknown keys in full (section.key): find the section header above.
        if msg.starts_with("unknown field") {
            let section = text[..span.start]
                .lines()
                .rev()
                .find_map(|l| {
                    let l = l.trim();
                    l.strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .map(str::to_string)
                })
                .map(|s| format!("{s}."))
                .unwrap_or_default();
            return anyhow!("{file}:{line}: unknown key `{section}{key}` ({msg})");
        }
        anyhow!("{file}:{line}: {msg}")
    })
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}
