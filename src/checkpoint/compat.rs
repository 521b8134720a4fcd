//! Whether a run may resume under a new config: the model and the data must be the
//! same; training keys that steer the loop, the schedule or the optimizer may change.
//! And whether data can feed a model: its vocabulary and, for a model from a
//! checkpoint, its tokenizer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::TrainingState;
use crate::config::{Config, ModelConfig};
use crate::data::Dataset;

/// [train] keys that may change on resume. The others (batch_size, seq_len, seed)
/// define the stream of batches the loader position points into.
const MAY_CHANGE: &[&str] = &[
    "max_steps",
    "log_every",
    "eval_every",
    "eval_steps",
    "checkpoint_every",
    "keep_last",
    "keep_every",
    "max_bad_steps",
    "lr",
    "min_lr",
    "warmup_steps",
    "grad_accum",
    "weight_decay",
    "beta1",
    "beta2",
    "adam_eps",
    "grad_clip",
    "precision",
];

/// Every key whose value differs, as `section.key: old -> new`, in config order.
fn differences(old: &Config, new: &Config) -> Vec<(String, String, String)> {
    let old = toml::Table::try_from(old).expect("config serializes");
    let new = toml::Table::try_from(new).expect("config serializes");
    let mut out = Vec::new();
    for (section, old_keys) in &old {
        let new_keys = new.get(section).and_then(|s| s.as_table());
        for (key, old_value) in old_keys.as_table().into_iter().flatten() {
            let new_value = new_keys.and_then(|t| t.get(key));
            if new_value != Some(old_value) {
                out.push((
                    section.clone(),
                    key.clone(),
                    format!(
                        "{old_value} -> {}",
                        new_value.map_or("(none)".into(), |v| v.to_string())
                    ),
                ));
            }
        }
    }
    out
}

/// The allowed changes from `saved` to `new` as `train.key: old -> new`, or an error
/// listing every change that is not allowed. `data.dir` is left to
/// [`check_same_data`]: the data matters, not how its path is spelled.
pub fn check_resume(saved: &Config, new: &Config) -> Result<Vec<String>> {
    let (allowed, refused): (Vec<_>, Vec<_>) = differences(saved, new)
        .into_iter()
        .filter(|(section, key, _)| (section.as_str(), key.as_str()) != ("data", "dir"))
        .partition(|(section, key, _)| section == "train" && MAY_CHANGE.contains(&key.as_str()));
    let show = |v: Vec<(String, String, String)>| -> Vec<String> {
        v.into_iter()
            .map(|(s, k, change)| format!("{s}.{k}: {change}"))
            .collect()
    };
    if !refused.is_empty() {
        bail!(
            "cannot resume: the model or data differ from the checkpoint's ({})",
            show(refused).join(", ")
        );
    }
    Ok(show(allowed))
}

/// Whether `data`, loaded for `new`, is the data of the run that wrote `saved`.
/// With the data's identity recorded, the same shards wherever they now are (see
/// [`crate::data::DataIdentity::check_same`]); returns notes for the user. Without it (the
/// built-in corpus, or a checkpoint written before identities were recorded), the
/// same `data.dir`, compared as canonical paths.
pub fn check_same_data(saved: &TrainingState, new: &Config, data: &Dataset) -> Result<Vec<String>> {
    match (&saved.data, &data.identity) {
        (Some(was), Some(is)) => was.check_same(is).context("cannot resume"),
        (Some(was), None) => bail!(
            "cannot resume: the checkpoint's data is {}, but data.dir is empty (the built-in corpus)",
            was.dir
        ),
        (None, _) => {
            let canonical = |dir: &str| {
                Path::new(dir)
                    .canonicalize()
                    .unwrap_or_else(|_| PathBuf::from(dir))
            };
            let (old, new) = (&saved.config.data.dir, &new.data.dir);
            if old.is_empty() != new.is_empty() || canonical(old) != canonical(new) {
                bail!(
                    "cannot resume: the model or data differ from the checkpoint's (data.dir: \"{old}\" -> \"{new}\")"
                );
            }
            Ok(Vec::new())
        }
    }
}

/// Whether a new run may start from a checkpoint's parameters (`train --init`):
/// any training or data setting may change, the model may not.
pub fn check_init(saved: &Config, new: &Config) -> Result<()> {
    let changed: Vec<String> = differences(saved, new)
        .into_iter()
        .filter(|(section, _, _)| section == "model")
        .map(|(s, k, change)| format!("{s}.{k}: {change}"))
        .collect();
    if !changed.is_empty() {
        bail!(
            "cannot start from the checkpoint: the model differs from its ({})",
            changed.join(", ")
        );
    }
    Ok(())
}

/// Whether `data` can feed a model of config `model`: every token id within its
/// vocabulary, and for a model from `checkpoint`, the data tokenized by the
/// checkpoint's tokenizer (both without one for shards that came without a
/// tokenizer.json).
pub fn check_data(
    data: &Dataset,
    model: &ModelConfig,
    checkpoint: Option<&TrainingState>,
) -> Result<()> {
    if let Some(state) = checkpoint {
        let hash = data.tokenizer.as_ref().map(|t| t.hash());
        if hash != state.tokenizer_hash.as_deref() {
            bail!(
                "the data's tokenizer (sha256 {}) differs from the checkpoint's ({})",
                hash.unwrap_or("none"),
                state.tokenizer_hash.as_deref().unwrap_or("none")
            );
        }
    }
    if data.vocab_size > model.vocab_size {
        bail!(
            "model.vocab_size = {} is smaller than the data's vocabulary ({} tokens)",
            model.vocab_size,
            data.vocab_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_refused_and_allowed_changes() {
        let saved = Config::tiny();
        let new = saved
            .with_override("train.max_steps=7")
            .unwrap()
            .with_override("train.lr=1e-3")
            .unwrap();
        let allowed = check_resume(&saved, &new).unwrap();
        assert_eq!(
            allowed,
            ["train.lr: 0.003 -> 0.001", "train.max_steps: 300 -> 7"]
        );
        let bad = new
            .with_override("model.n_layer=2")
            .unwrap()
            .with_override("train.seed=1")
            .unwrap();
        let err = check_resume(&saved, &bad).unwrap_err().to_string();
        assert!(err.contains("model.n_layer: 4 -> 2"), "{err}");
        assert!(err.contains("train.seed: 1337 -> 1"), "{err}");
    }
}
