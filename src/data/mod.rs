//! Data: tokenizers, token shards, `hgpt prepare`, the built-in corpus and the
//! batch loader.

pub mod corpus;
pub mod fingerprint;
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
pub use fingerprint::DataIdentity;
pub use loader::{Batch, Loader, LoaderPosition};
use manifest::{INCOMPLETE_FILE, MANIFEST_FILE, Manifest, Split};
use shard::Shard;
use tokenizer::TOKENIZER_FILE;
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
    /// What a checkpoint records of prepared data (None for the built-in corpus).
    pub identity: Option<DataIdentity>,
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
    /// Token ids must be below this (the model's vocabulary) where the data has no
    /// tokenizer to say its own.
    pub vocab_size: usize,
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
            vocab_size: config.model.vocab_size,
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
    // The text and its byte tokens (4 bytes each) are held at once.
    crate::memory::ensure_fits(
        5.0 * (d.builtin_train_bytes as f64 + d.builtin_val_bytes as f64),
        &format!(
            "the built-in corpus of data.builtin_train_bytes = {} and data.builtin_val_bytes = {}",
            d.builtin_train_bytes, d.builtin_val_bytes
        ),
        crate::memory::host_available()?.as_ref(),
    )?;
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
    let counts =
        shard::count_tokens(&train, tok.vocab_size(), "the byte tokenizer's vocabulary")?.counts;
    let val = vec![Shard::in_memory("the built-in corpus", val)];
    // The batch is what asks for the text: name it first, then the corpus size.
    let too_little = |split: &str, bytes: usize| {
        format!(
            "a batch of {} sequences of {} tokens is larger than the built-in corpus's {split} text (data.builtin_{split}_bytes = {bytes}): lower the batch size or seq_len, or raise data.builtin_{split}_bytes",
            spec.batch_size, spec.seq_len
        )
    };
    let (train, val) = spec.loaders(train, val);
    Ok(Dataset {
        train: train.with_context(|| too_little("train", d.builtin_train_bytes))?,
        val: val.with_context(|| too_little("val", d.builtin_val_bytes))?,
        vocab_size: tok.vocab_size(),
        tokenizer: Some(tok),
        description,
        identity: None,
        unigram_entropy: unigram_entropy(&counts),
    })
}

/// The splits ("train", "val") a shard file name claims as llm.c names its
/// shards: a `train` or `val` word, bounded by `_` or the start of the name,
/// followed by a `_`-separated shard number or by the `.bin` that ends the name
/// (`fineweb_train_000001.bin`, `tiny_shakespeare_val.bin`). Other names, like
/// `trainval.bin` or `medieval_notes.bin`, claim neither.
pub fn claimed_splits(name: &str) -> Vec<&'static str> {
    let Some(stem) = name.strip_suffix(".bin") else {
        return Vec::new();
    };
    let words: Vec<&str> = stem.split('_').collect();
    let is_number = |w: &&str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    ["train", "val"]
        .into_iter()
        .filter(|split| {
            words
                .iter()
                .enumerate()
                .any(|(i, w)| w == split && words.get(i + 1).is_none_or(is_number))
        })
        .collect()
}

/// Shard files of one split in `dir`, in name order: those the manifest lists,
/// or without a manifest (llm.c's output) those whose names claim the split (see
/// [`claimed_splits`]); a name that claims both splits is refused.
fn split_files(dir: &Path, split: &str, manifest: Option<&Split>) -> Result<Vec<PathBuf>> {
    if let Some(m) = manifest {
        return Ok(m.shards.iter().map(|s| dir.join(&s.file)).collect());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let claims = claimed_splits(&name);
        if claims.len() > 1 {
            bail!(
                "{}: the name claims both the train and the val split; rename it (llm.c names shards like NAME_train_000001.bin)",
                path.display()
            );
        }
        if claims.contains(&split) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The file names of `shards` for the user: all of them when few, else the first
/// two and the last.
fn shard_names(shards: &[Shard]) -> String {
    let name = |s: &Shard| {
        Path::new(s.name())
            .file_name()
            .map_or(s.name().to_string(), |n| n.to_string_lossy().into_owned())
    };
    match shards {
        [first, second, .., last] if shards.len() > 4 => format!(
            "{}, {}, ..., {} ({} files)",
            name(first),
            name(second),
            name(last),
            shards.len()
        ),
        _ => shards.iter().map(name).collect::<Vec<_>>().join(", "),
    }
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
    // Bare shards: their ids say it, up to a bound far above any real tokenizer's
    // (a stray huge id must not size a count table of gigabytes).
    const INFER_LIMIT: usize = 1 << 24;
    let source = format!(
        "the {INFER_LIMIT} ids a vocabulary is inferred from bare shards within (set model.vocab_size)"
    );
    let mut largest = None;
    for split in ["train", "val"] {
        let scan = shard::count_tokens(&open_split(dir, split, None)?, INFER_LIMIT, &source)?;
        largest = largest.max(scan.max.into_iter().flatten().max());
    }
    Ok(largest.map_or(0, |m| m as usize + 1))
}

/// Shards in `dir` as written by `hgpt prepare` or llm.c's scripts.
pub fn prepared(dir: &Path, spec: &DataSpec) -> Result<Dataset> {
    let (manifest, tokenizer) = open_prepared(dir)?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let train = open_split(dir, "train", manifest.as_ref().map(|m| &m.train))?;
    let val = open_split(dir, "val", manifest.as_ref().map(|m| &m.val))?;

    // One pass over every token: ids in range, the training unigram entropy, and
    // each shard's checksum for the identity a checkpoint records. Without a
    // tokenizer the ids are checked against the model's vocabulary.
    let (limit, vocab_source) = match &tokenizer {
        Some(t) => (
            t.vocab_size(),
            format!("the vocabulary of {}", tokenizer_path.display()),
        ),
        None => (
            spec.vocab_size,
            format!(
                "model.vocab_size ({} has no {TOKENIZER_FILE})",
                dir.display()
            ),
        ),
    };
    let train_scan = shard::count_tokens(&train, limit, &vocab_source)?;
    let val_scan = shard::count_tokens(&val, limit, &vocab_source)?;
    let counts = &train_scan.counts;
    let prints = |shards: &[Shard], scan: &shard::TokenScan| {
        shards
            .iter()
            .zip(&scan.crc32)
            .map(|(s, &crc)| (PathBuf::from(s.name()), crc))
            .collect::<Vec<_>>()
    };
    let identity = DataIdentity::of(dir, &prints(&train, &train_scan), &prints(&val, &val_scan))?;
    let vocab_size = match &tokenizer {
        Some(t) => t.vocab_size(),
        None => counts.len().max(val_scan.counts.len()),
    };
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
    ) + &format!(
        "; train: {}; val: {}",
        shard_names(&train),
        shard_names(&val)
    );
    let (train_loader, val_loader) = spec.loaders(train, val);
    Ok(Dataset {
        train: train_loader.with_context(|| format!("{}: training shards", dir.display()))?,
        val: val_loader.with_context(|| format!("{}: validation shards", dir.display()))?,
        vocab_size,
        tokenizer,
        description,
        identity: Some(identity),
        unigram_entropy: unigram_entropy(counts),
    })
}
