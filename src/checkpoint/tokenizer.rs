//! The tokenizer kept with a checkpoint: a copy of the run's tokenizer.json, whose
//! hash state.json records, so that eval and generate read text as training did
//! and a resume can tell that the data is tokenized the same way.

use std::path::Path;

use anyhow::{Result, bail};

use super::{Checkpoint, STATE_FILE};
use crate::data::Tokenizer;
use crate::data::tokenizer::TOKENIZER_FILE;

/// Writes `tokenizer` into the checkpoint directory `dir`, fsynced.
pub fn write(tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    let path = dir.join(TOKENIZER_FILE);
    tokenizer.save(&path)?;
    super::atomic::sync_file(&path)
}

/// The checkpoint's tokenizer, checked against the hash in state.json.
pub fn load(ckpt: &Checkpoint) -> Result<Tokenizer> {
    let path = ckpt.dir.join(TOKENIZER_FILE);
    let Some(expected) = &ckpt.state.tokenizer_hash else {
        bail!(
            "{}: no tokenizer (the run's data came without a tokenizer.json), so text cannot be tokenized for it",
            ckpt.dir.display()
        );
    };
    if !path.exists() {
        bail!("{}: missing (the checkpoint is incomplete)", path.display());
    }
    let tokenizer = Tokenizer::from_file(&path)?;
    if tokenizer.hash() != expected {
        bail!(
            "{}: sha256 {}, but {STATE_FILE} says {expected}: not the tokenizer this model was trained with",
            path.display(),
            tokenizer.hash()
        );
    }
    Ok(tokenizer)
}
