//! DIR/manifest.json: what `hgpt prepare` wrote, so loading can check that the
//! shards and tokenizer are the ones it made.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::input::InputFile;

pub const MANIFEST_FILE: &str = "manifest.json";
/// Present while `hgpt prepare` runs; left behind if it was killed.
pub const INCOMPLETE_FILE: &str = "prepare.incomplete";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub tokens: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub documents: u64,
    pub tokens: u64,
    pub shards: Vec<ShardEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub vocab_size: usize,
    pub eot: u32,
    /// SHA-256 of the compact tokenizer.json (see `Tokenizer::hash`).
    pub tokenizer_sha256: String,
    pub train: Split,
    pub val: Split,
    /// Input bytes read and invalid UTF-8 sequences replaced in them.
    pub input_bytes: u64,
    pub invalid_utf8: u64,
    pub sources: Vec<InputFile>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not a manifest", path.display()))
    }

    /// Writes via a temporary file and rename: a manifest is there whole or not at all.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = super::shard::temp_path(path);
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        std::fs::write(&tmp, text + "\n")
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}
