//! Data: tokenizers, token shards, `hgpt prepare`, the built-in corpus and the
//! batch loader.

pub mod corpus;
pub mod input;
pub mod loader;
pub mod manifest;
pub mod parquet;
pub mod prepare;
pub mod shard;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::config::{Config, DataConfig};
pub use loader::{Batch, Loader, LoaderPosition};
use manifest::{INCOMPLETE_FILE, MANIFEST_FILE, Manifest, Split, TOKENIZER_FILE};
use shard::Shard;
pub use tokenizer::Tokenizer;

/// Training and validation data, ready for the training loop.
pub struct Dataset {
    pub train: Loader,
    pub val: Loader,
    /// Token ids are below this: the tokenizer's vocabulary, or for shards that
    /// came without a tokenizer.json, one past the largest id in them.
    pub vocab_size: usize,
    /// None only for shards that came without a tokenizer.json (e.g. llm.c's).
    pub tokenizer: Option<Tokenizer>,
    /// A line for the user describing where the data came from.
    pub description: String,
    /// Unigram entropy of the training tokens, nats.
    pub unigram_entropy: f64,
}

/// What the loaders need: where the tokens come from and how they are cut into
/// batches. The training loader reads window `rank` of every `world` (the
/// validation loader reads them all).
#[derive(Clone, Debug)]
pub struct DataSpec<'a> {
    /// `[data]`: a prepared directory, or the built-in corpus's sizes when `dir` is
    /// empty.
    pub source: &'a DataConfig,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Seeds the shuffled window order (and the built-in corpus).
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
}

impl DataSpec<'_> {
    /// The data of a run of `config`, as one process (rank 0 of 1) reads it.
    pub fn of(config: &Config) -> DataSpec<'_> {
        let t = &config.train;
        DataSpec {
            source: &config.data,
            batch_size: t.batch_size,
            seq_len: t.seq_len,
            seed: t.seed,
            rank: 0,
            world: 1,
        }
    }

    /// Training and validation loaders over `train` and `val`.
    fn loaders(&self, train: Vec<Shard>, val: Vec<Shard>) -> (Result<Loader>, Result<Loader>) {
        let (b, t, seed) = (self.batch_size, self.seq_len, self.seed);
        (
            Loader::new(train, b, t, seed, self.rank, self.world),
            Loader::new(val, b, t, seed, 0, 1),
        )
    }
}

/// The data `spec` asks for: `[data] dir`, or the built-in corpus when empty.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    if spec.source.dir.is_empty() {
        builtin(spec)
    } else {
        prepared(Path::new(&spec.source.dir), spec)
    }
}

/// Entropy (nats) of the distribution given by token counts: what a model that
/// ignores context can reach at best.
pub fn unigram_entropy(counts: &[u64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.ln()
        })
        .sum()
}

/// Tokens of documents, each preceded by the end-of-text token (as prepared
/// shards have them).
pub fn join_documents(tok: &Tokenizer, docs: &[String]) -> Vec<u32> {
    let mut out = Vec::new();
    for d in docs {
        out.push(tok.eot());
        out.extend(tok.encode(d));
    }
    out
}

/// The built-in corpus as a dataset: train and val drawn with different seeds.
pub fn builtin(spec: &DataSpec) -> Result<Dataset> {
    let d = spec.source;
    let tok = Tokenizer::bytes();
    let train = join_documents(&tok, &corpus::generate(spec.seed, d.builtin_train_bytes));
    let val = join_documents(
        &tok,
        &corpus::generate(spec.seed ^ 0x5eed_f7a1, d.builtin_val_bytes),
    );
    let description = format!(
        "built-in corpus: {} training tokens, {} validation tokens (byte-level, vocab {})",
        train.len(),
        val.len(),
        tok.vocab_size()
    );
    let train = vec![Shard::in_memory("the built-in corpus", train)];
    let (counts, _) = shard::count_tokens(&train);
    let val = vec![Shard::in_memory("the built-in corpus", val)];
    let too_little = |key: &str, bytes: usize| format!("data.{key} = {bytes}: too little text");
    let (train, val) = spec.loaders(train, val);
    Ok(Dataset {
        train: train.with_context(|| too_little("builtin_train_bytes", d.builtin_train_bytes))?,
        val: val.with_context(|| too_little("builtin_val_bytes", d.builtin_val_bytes))?,
        vocab_size: tok.vocab_size(),
        tokenizer: Some(tok),
        description,
        unigram_entropy: unigram_entropy(&counts),
    })
}

/// Shard files of one split in `dir`, in name order: those the manifest lists,
/// or without a manifest (llm.c's output) every `*{split}*.bin`.
fn split_files(dir: &Path, split: &str, manifest: Option<&Split>) -> Result<Vec<PathBuf>> {
    if let Some(m) = manifest {
        return Ok(m.shards.iter().map(|s| dir.join(&s.file)).collect());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".bin") && name.contains(split) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Opens one split's shards, checking them against the manifest if there is one.
fn open_split(dir: &Path, split: &str, manifest: Option<&Split>) -> Result<Vec<Shard>> {
    let files = split_files(dir, split, manifest)?;
    if files.is_empty() {
        bail!(
            "{}: no {split} shards (expected files named like {split}_000000.bin)",
            dir.display()
        );
    }
    let shards = files
        .iter()
        .map(|f| Shard::open(f))
        .collect::<Result<Vec<_>>>()?;
    if let Some(m) = manifest {
        for (shard, entry) in shards.iter().zip(&m.shards) {
            if shard.len() as u64 != entry.tokens {
                bail!(
                    "{}: {} tokens, but {MANIFEST_FILE} says {}",
                    shard.name(),
                    shard.len(),
                    entry.tokens
                );
            }
        }
    }
    Ok(shards)
}

/// A prepared directory's manifest and tokenizer (either may be absent, as for
/// llm.c's output), checked against each other.
fn open_prepared(dir: &Path) -> Result<(Option<Manifest>, Option<Tokenizer>)> {
    if !dir.is_dir() {
        bail!("data.dir = {}: not a directory", dir.display());
    }
    if dir.join(INCOMPLETE_FILE).exists() {
        bail!(
            "{}: an `hgpt prepare` into it did not finish ({INCOMPLETE_FILE} is there); prepare it again into an empty directory",
            dir.display()
        );
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = manifest_path
        .exists()
        .then(|| Manifest::read(&manifest_path))
        .transpose()?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer = tokenizer_path
        .exists()
        .then(|| Tokenizer::from_file(&tokenizer_path))
        .transpose()?;
    if let (Some(m), Some(tok)) = (&manifest, &tokenizer)
        && m.tokenizer_sha256 != tok.hash()
    {
        bail!(
            "{}: not the tokenizer these shards were made with (sha256 {}, {} says {})",
            tokenizer_path.display(),
            tok.hash(),
            manifest_path.display(),
            m.tokenizer_sha256
        );
    }
    Ok((manifest, tokenizer))
}

/// One split ("train" or "val") of a prepared directory, with the directory's
/// tokenizer if it has one: for tools that read a split whole, like `hgpt eval`.
pub fn prepared_split(dir: &Path, split: &str) -> Result<(Vec<Shard>, Option<Tokenizer>)> {
    let (manifest, tokenizer) = open_prepared(dir)?;
    let entry = manifest.as_ref().map(|m| match split {
        "train" => &m.train,
        _ => &m.val,
    });
    Ok((open_split(dir, split, entry)?, tokenizer))
}

/// The vocabulary of the data in `dir`: its tokenizer's, else its manifest's, else
/// (llm.c's shards alone) one past the largest id in either split.
pub fn vocab_of(dir: &Path) -> Result<usize> {
    let (manifest, tokenizer) = open_prepared(dir)?;
    if let Some(tok) = tokenizer {
        return Ok(tok.vocab_size());
    }
    if let Some(m) = manifest {
        return Ok(m.vocab_size);
    }
    let mut largest = None;
    for split in ["train", "val"] {
        let (_, max) = shard::count_tokens(&open_split(dir, split, None)?);
        largest = largest.max(max.into_iter().flatten().max());
    }
    Ok(largest.map_or(0, |m| m as usize + 1))
}

/// Shards in `dir` as written by `hgpt prepare` or llm.c's scripts.
pub fn prepared(dir: &Path, spec: &DataSpec) -> Result<Dataset> {
    let (manifest, tokenizer) = open_prepared(dir)?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let train = open_split(dir, "train", manifest.as_ref().map(|m| &m.train))?;
    let val = open_split(dir, "val", manifest.as_ref().map(|m| &m.val))?;

    // One pass over every token: ids in range, and the training unigram entropy.
    let (counts, train_max) = shard::count_tokens(&train);
    let (_, val_max) = shard::count_tokens(&val);
    let largest = train_max.iter().chain(&val_max).flatten().max().copied();
    let vocab_size = tokenizer
        .as_ref()
        .map_or(largest.map_or(0, |m| m as usize + 1), |t| t.vocab_size());
    let shards = train.iter().chain(&val);
    for (shard, max) in shards.zip(train_max.iter().chain(&val_max)) {
        if let Some(m) = *max
            && m as usize >= vocab_size
        {
            bail!(
                "{}: holds token {m}, outside the vocabulary of {} ({vocab_size} tokens)",
                shard.name(),
                tokenizer_path.display()
            );
        }
    }
    let (train_tokens, val_tokens): (usize, usize) = (
        train.iter().map(Shard::len).sum(),
        val.iter().map(Shard::len).sum(),
    );
    let description = format!(
        "{}: {train_tokens} training tokens in {} shards, {val_tokens} validation tokens in {} shards, vocab {vocab_size}{}",
        dir.display(),
        train.len(),
        val.len(),
        if tokenizer.is_some() {
            ""
        } else {
            " (no tokenizer.json: vocab from the largest id)"
        }
    );
    let (train_loader, val_loader) = spec.loaders(train, val);
    Ok(Dataset {
        train: train_loader.with_context(|| format!("{}: training shards", dir.display()))?,
        val: val_loader.with_context(|| format!("{}: validation shards", dir.display()))?,
        vocab_size,
        tokenizer,
        description,
        unigram_entropy: unigram_entropy(&counts),
    })
}
