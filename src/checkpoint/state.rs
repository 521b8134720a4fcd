//! state.json: everything besides the tensors that a run needs to continue exactly.
//!
//! There is no random-number state to save: after initialisation the training loop
//! draws no random numbers (the data order is a pure function of the seed and the
//! epoch), so the loader position is the whole of it.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::{DataIdentity, LoaderPosition};

/// Version of the checkpoint layout (files, names, metadata keys). A reader refuses
/// any other version rather than guess.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState {
    pub format_version: u32,
    /// The hgpt that wrote the checkpoint (informational).
    pub hgpt_version: String,
    /// Optimizer steps completed.
    pub step: usize,
    /// AdamW updates applied (less than `step` when the divergence guard skipped some).
    pub adam_step: u64,
    /// Where the training loader continues.
    pub loader: LoaderPosition,
    /// SHA-256 of the tokenizer the data was made with (None for token shards
    /// that came without one).
    pub tokenizer_hash: Option<String>,
    /// The identity of prepared data (shard fingerprints, manifest hash, canonical
    /// path) that a resume compares its data with; absent for the built-in corpus,
    /// a model alone, and checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataIdentity>,
    /// The resolved config of the run.
    pub config: Config,
}

impl TrainingState {
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        super::atomic::write_synced(path, text.as_bytes())
    }

    /// Reads and checks state.json; the format version is checked before the rest so
    /// that a file from another version says so instead of failing on a field.
    pub fn read(path: &Path) -> Result<TrainingState> {
        let file = path.display();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {file}"))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{file}: not valid JSON, truncated or corrupted ({e})"))?;
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == FORMAT_VERSION as u64 => {}
            Some(v) => bail!(
                "{file}: checkpoint format version {v}, but this hgpt ({}) reads version {FORMAT_VERSION}",
                env!("CARGO_PKG_VERSION")
            ),
            None => bail!("{file}: no format_version (not an hgpt checkpoint)"),
        }
        let state: TrainingState =
            serde_json::from_value(value).map_err(|e| anyhow!("{file}: {e}"))?;
        state
            .config
            .validate()
            .map_err(|e| anyhow!("{file}: config: {e:#}"))?;
        Ok(state)
    }
}
