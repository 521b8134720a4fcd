//! `hgpt prepare`: text in, token shards out.
//!
//! A reader thread streams document pieces and groups them; each group is encoded
//! in parallel (rayon, all cores) and written in input order, so memory stays a
//! few groups whatever the input size. Of each run of about 1/val_fraction
//! documents, one drawn at random (seeded) goes to validation, the rest to
//! training; each document is preceded by the end-of-text token, as llm.c's
//! scripts do.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::input::{DocumentReader, InputFile, Piece, list_files};
use super::manifest::{INCOMPLETE_FILE, MANIFEST_FILE, Manifest, ShardEntry, Split};
use super::shard::{ShardWriter, TokenWidth};
use super::tokenizer::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer};

/// Text per group handed to the encoders at once.
const GROUP_BYTES: usize = 8 << 20;

/// Where the tokenizer comes from.
#[derive(Clone, Debug)]
pub enum TokenizerSource {
    /// The built-in byte-level tokenizer.
    Bytes,
    /// A Hugging Face tokenizer.json.
    File(PathBuf),
    /// GPT-2's encoder.json and vocab.bpe.
    Gpt2Bpe { encoder: PathBuf, merges: PathBuf },
    /// A byte-level BPE of this vocabulary size, trained on the input.
    Train(usize),
}

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub inputs: Vec<PathBuf>,
    pub out: PathBuf,
    pub jsonl_field: String,
    pub tokenizer: TokenizerSource,
    /// Share of documents for validation (at least one document).
    pub val_fraction: f64,
    /// Seeds the draw of validation documents.
    pub seed: u64,
    /// Tokens per shard (the last of each split may hold fewer).
    pub shard_tokens: u64,
}

/// What a finished prepare did.
#[derive(Clone, Debug)]
pub struct PrepareReport {
    pub manifest: Manifest,
    /// Input files with invalid UTF-8.
    pub files_with_invalid_utf8: u64,
    pub seconds: f64,
    /// What the user should know about the result: a validation share of the
    /// tokens outside 1-20%, a trained tokenizer short of the vocabulary asked for.
    pub warnings: Vec<String>,
}

impl PrepareReport {
    pub fn summary(&self, out: &Path) -> String {
        let m = &self.manifest;
        let mut s = format!(
            "prepared {}: {} training tokens ({} documents, {} shards), {} validation tokens ({} documents, {} shards), vocab {}; {:.1} MB in {:.1}s ({:.2} MB/s, {:.0} tokens/s)",
            out.display(),
            m.train.tokens,
            m.train.documents,
            m.train.shards.len(),
            m.val.tokens,
            m.val.documents,
            m.val.shards.len(),
            m.vocab_size,
            m.input_bytes as f64 / 1e6,
            self.seconds,
            m.input_bytes as f64 / 1e6 / self.seconds,
            (m.train.tokens + m.val.tokens) as f64 / self.seconds
        );
        if m.invalid_utf8 > 0 {
            s += &format!(
                "\nreplaced {} invalid UTF-8 sequences in {} file(s) with U+FFFD",
                m.invalid_utf8, self.files_with_invalid_utf8
            );
        }
        s
    }
}

/// One split's shards, started as tokens arrive.
struct SplitWriter {
    name: &'static str,
    dir: PathBuf,
    width: TokenWidth,
    shard_tokens: u64,
    current: Option<ShardWriter>,
    split: Split,
}

impl SplitWriter {
    fn new(name: &'static str, dir: &Path, width: TokenWidth, shard_tokens: u64) -> SplitWriter {
        SplitWriter {
            name,
            dir: dir.to_path_buf(),
            width,
            shard_tokens,
            current: None,
            split: Split::default(),
        }
    }

    fn write(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            if self.current.is_none() {
                let file = format!("{}_{:06}.bin", self.name, self.split.shards.len());
                self.current = Some(ShardWriter::create(&self.dir.join(file), self.width)?);
            }
            let shard = self.current.as_mut().expect("just opened");
            let n = ((self.shard_tokens - shard.len()) as usize).min(tokens.len());
            shard.write(&tokens[..n])?;
            self.split.tokens += n as u64;
            tokens = &tokens[n..];
            if shard.len() == self.shard_tokens {
                self.finish_shard()?;
            }
        }
        Ok(())
    }

    fn finish_shard(&mut self) -> Result<()> {
        if let Some(shard) = self.current.take() {
            let file = shard.path().file_name().expect("a file name");
            let file = file.to_string_lossy().into_owned();
            let tokens = shard.finish()?;
            self.split.shards.push(ShardEntry { file, tokens });
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Split> {
        self.finish_shard()?;
        Ok(self.split)
    }
}

/// Is document `i` (from 0) a validation document? The documents fall in runs of
/// about 1/fraction (run k: those with floor(i * fraction) = k), and of each run
/// one, at a position drawn from `seed` and k, is; so validation spreads over
/// the whole input, a fraction of it, and the same seed picks the same ones.
fn is_val(i: u64, fraction: f64, seed: u64) -> bool {
    let k = (i as f64 * fraction).floor() as u64;
    let start = (k as f64 / fraction).ceil() as u64;
    let end = ((k + 1) as f64 / fraction).ceil() as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    i == start + rng.random_range(0..(end - start).max(1))
}

/// Files `hgpt prepare` writes into its output directory.
fn is_prepare_output(name: &str) -> bool {
    [
        MANIFEST_FILE,
        TOKENIZER_FILE,
        TOKENIZER_CONFIG_FILE,
        INCOMPLETE_FILE,
    ]
    .contains(&name)
        || ((name.starts_with("train_") || name.starts_with("val_"))
            && (name.ends_with(".bin") || name.ends_with(".bin.tmp")))
}

/// The output directory while prepare runs: marked incomplete, and emptied of
/// what prepare wrote if it fails.
struct OutputDir {
    dir: PathBuf,
    done: bool,
}

impl OutputDir {
    fn claim(dir: &Path) -> Result<OutputDir> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        let listing =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in listing {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if is_prepare_output(&name) {
                bail!(
                    "{}: already holds prepared data ({name}); choose another --out or remove it",
                    dir.display()
                );
            }
        }
        let marker = dir.join(INCOMPLETE_FILE);
        std::fs::write(&marker, "hgpt prepare is writing this directory\n")
            .with_context(|| format!("cannot write {}", marker.display()))?;
        Ok(OutputDir {
            dir: dir.to_path_buf(),
            done: false,
        })
    }

    fn finish(mut self) -> Result<()> {
        let marker = self.dir.join(INCOMPLETE_FILE);
        std::fs::remove_file(&marker)
            .with_context(|| format!("cannot remove {}", marker.display()))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Ok(listing) = std::fs::read_dir(&self.dir) {
            for entry in listing.flatten() {
                if is_prepare_output(&entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Trains a tokenizer on a first pass over the input.
fn train_tokenizer(vocab_size: usize, files: &[InputFile], field: &str) -> Result<Tokenizer> {
    /// Piece texts, stopping at the first read error (kept for the caller).
    struct Texts<'a> {
        reader: DocumentReader,
        error: &'a mut Option<anyhow::Error>,
    }
    impl Iterator for Texts<'_> {
        type Item = String;
        fn next(&mut self) -> Option<String> {
            match self.reader.next()? {
                Ok(piece) => Some(piece.text),
                Err(e) => {
                    *self.error = Some(e);
                    None
                }
            }
        }
    }
    let mut error = None;
    let texts = Texts {
        reader: DocumentReader::new(files.to_vec(), field),
        error: &mut error,
    };
    let tokenizer = Tokenizer::train_bpe(vocab_size, texts);
    match error {
        Some(e) => Err(e),
        None => tokenizer,
    }
}

/// Groups of pieces of about GROUP_BYTES, sent from a reader thread; the
/// channel's bound keeps memory bounded. The thread returns the reader's UTF-8
/// counts.
type ReaderThread = std::thread::JoinHandle<Result<(u64, u64)>>;

fn spawn_reader(files: Vec<InputFile>, field: &str) -> (mpsc::Receiver<Vec<Piece>>, ReaderThread) {
    let (tx, rx) = mpsc::sync_channel::<Vec<Piece>>(2);
    let mut reader = DocumentReader::new(files, field);
    let thread = std::thread::spawn(move || {
        let mut group = Vec::new();
        let mut bytes = 0;
        for piece in reader.by_ref() {
            let piece = piece?;
            bytes += piece.text.len();
            group.push(piece);
            if bytes >= GROUP_BYTES {
                if tx.send(std::mem::take(&mut group)).is_err() {
                    break; // the consumer stopped on an error of its own
                }
                bytes = 0;
            }
        }
        if !group.is_empty() {
            let _ = tx.send(group);
        }
        Ok((reader.invalid_utf8, reader.files_with_invalid_utf8))
    });
    (rx, thread)
}

/// Runs `hgpt prepare`: reads, tokenizes and writes the shards, the tokenizer and
/// the manifest. `progress` counts the input bytes read (its length is set to
/// their total) and carries the tokens/s as its message; the caller draws it or
/// passes a hidden one.
pub fn prepare(opts: &PrepareOptions, progress: &ProgressBar) -> Result<PrepareReport> {
    let start = Instant::now();
    if !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        bail!(
            "--val-fraction {} must be between 0 and 1 (exclusive)",
            opts.val_fraction
        );
    }
    if opts.shard_tokens == 0 || opts.shard_tokens > i32::MAX as u64 {
        bail!(
            "--shard-tokens {} must be between 1 and {} (the shard header's limit)",
            opts.shard_tokens,
            i32::MAX
        );
    }
    let files = list_files(&opts.inputs)?;
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let names = || {
        opts.inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if total_bytes == 0 {
        bail!("no input text in {}", names());
    }
    let out = OutputDir::claim(&opts.out)?;
    let tokenizer = match &opts.tokenizer {
        TokenizerSource::Bytes => Tokenizer::bytes(),
        TokenizerSource::File(path) => Tokenizer::from_file(path)?,
        TokenizerSource::Gpt2Bpe { encoder, merges } => Tokenizer::gpt2_bpe(encoder, merges)?,
        TokenizerSource::Train(vocab) => train_tokenizer(*vocab, &files, &opts.jsonl_field)?,
    };
    let width = TokenWidth::for_vocab(tokenizer.vocab_size());
    let mut train = SplitWriter::new("train", &opts.out, width, opts.shard_tokens);
    let mut val = SplitWriter::new("val", &opts.out, width, opts.shard_tokens);
    let bar = progress;
    bar.set_length(total_bytes);
    let (groups, reader) = spawn_reader(files.clone(), &opts.jsonl_field);
    let (mut documents, mut tokens, mut bytes) = (0u64, 0u64, 0u64);
    let mut to_val = false;
    // Until validation has a document, the newest training document waits here
    // rather than in a shard: an input that ends before the first run's draw gives
    // validation that one (at most one document is held, early on).
    let mut held: Option<Vec<u32>> = None;
    for group in groups {
        let encoded: Vec<Vec<u32>> = group
            .par_iter()
            .map(|piece| {
                let mut ids = Vec::with_capacity(piece.text.len() / 3 + 1);
                if piece.starts_document {
                    ids.push(tokenizer.eot());
                }
                ids.extend(tokenizer.encode(&piece.text));
                ids
            })
            .collect();
        for (piece, ids) in group.iter().zip(&encoded) {
            if piece.starts_document {
                if let Some(doc) = held.take() {
                    train.write(&doc)?;
                }
                to_val = is_val(documents, opts.val_fraction, opts.seed);
                documents += 1;
                let split = if to_val { &mut val } else { &mut train };
                split.split.documents += 1;
            }
            if to_val {
                val.write(ids)?;
            } else if val.split.documents == 0 {
                held.get_or_insert_with(Vec::new).extend(ids);
            } else {
                train.write(ids)?;
            }
            tokens += ids.len() as u64;
            bytes += piece.source_bytes;
        }
        bar.set_position(bytes);
        bar.set_message(format!(
            "{:.0}k tokens/s",
            tokens as f64 / start.elapsed().as_secs_f64() / 1e3
        ));
    }
    bar.finish_and_clear();
    let (invalid_utf8, files_with_invalid_utf8) = reader
        .join()
        .map_err(|_| anyhow!("the input reader thread panicked"))??;
    if documents == 0 {
        bail!("no text in the input ({})", names());
    }
    if let Some(doc) = held {
        // Validation drew none: the last document is its one.
        train.split.documents -= 1;
        val.split.documents += 1;
        val.write(&doc)?;
    }
    let (train, val) = (train.finish()?, val.finish()?);
    if train.documents == 0 && documents > 1 {
        bail!(
            "all {documents} documents of the input ({}) went to validation at --val-fraction {}: lower it so at least one is left to train on",
            names(),
            opts.val_fraction
        );
    }
    if train.documents == 0 {
        bail!(
            "the input ({}) is a single document, which went to validation: need at least two (plain text files are one document each unless separated by <|endoftext|>; JSON Lines hold one per line)",
            names()
        );
    }
    let mut warnings = Vec::new();
    let val_share = val.tokens as f64 / (train.tokens + val.tokens) as f64;
    if !(0.01..=0.2).contains(&val_share) {
        warnings.push(format!(
            "warning: validation holds {:.1}% of the tokens ({} of {}), outside 1-20%: {} (--val-fraction {} picks documents, not tokens)",
            100.0 * val_share,
            val.tokens,
            train.tokens + val.tokens,
            if val_share < 0.01 {
                "its loss will be noisy"
            } else {
                "much of the data is not trained on"
            },
            opts.val_fraction
        ));
    }
    if let TokenizerSource::Train(asked) = &opts.tokenizer
        && tokenizer.vocab_size() < *asked
    {
        warnings.push(format!(
            "warning: --train-tokenizer {asked}: the input supports only {} tokens (too little text to learn more merges)",
            tokenizer.vocab_size()
        ));
    }
    tokenizer.save_for_transformers(&opts.out, None)?;
    let manifest = Manifest {
        vocab_size: tokenizer.vocab_size(),
        eot: tokenizer.eot(),
        tokenizer_sha256: tokenizer.hash().to_string(),
        train,
        val,
        input_bytes: total_bytes,
        invalid_utf8,
        sources: files,
    };
    manifest.write(&opts.out.join(MANIFEST_FILE))?;
    out.finish()?;
    Ok(PrepareReport {
        manifest,
        files_with_invalid_utf8,
        seconds: start.elapsed().as_secs_f64(),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::is_val;

    #[test]
    fn one_validation_document_is_drawn_from_each_run_by_the_seed() {
        let picked = |seed| -> Vec<u64> { (0..1000).filter(|&i| is_val(i, 0.01, seed)).collect() };
        let a = picked(1);
        assert_eq!(a.len(), 10);
        for (k, &i) in a.iter().enumerate() {
            assert_eq!(i / 100, k as u64, "one in each run of 100: {a:?}");
        }
        assert_eq!(a, picked(1), "the same seed picks the same documents");
        assert_ne!(a, picked(2), "another seed picks others");
        assert_ne!(a.iter().map(|i| i % 100).collect::<Vec<_>>(), vec![0; 10]);
        for fraction in [0.3, 0.5, 0.99] {
            let n = (0..10_000).filter(|&i| is_val(i, fraction, 7)).count();
            assert!(
                (n as f64 - 10_000.0 * fraction).abs() <= 1.0,
                "{fraction}: {n}"
            );
        }
    }
}
