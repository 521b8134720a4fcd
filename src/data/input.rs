//! Reading input text for `hgpt prepare`: plain text files, directories of them,
//! JSON Lines and Parquet, as a stream of document pieces of bounded size.
//!
//! A plain text file is one document, or several separated by the literal
//! <|endoftext|> (as in TinyStories' text dumps, where it stands on a line of its
//! own: the newlines around it belong to the separator); a long document arrives
//! in pieces cut at a newline. A JSON Lines file (`.jsonl`, `.ndjson`) holds one
//! document per line in a string field; a Parquet file (`.parquet`) one per row
//! in a string column of the same name ([`super::parquet`]). Files ending `.gz`
//! or `.zst` are decompressed as they stream, and read by the name under the
//! suffix; `.json.gz` and `.json.zst` are JSON Lines, as the Hub names them (C4).
//! Bytes that are not UTF-8 are replaced with U+FFFD and counted.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::parquet::ParquetColumn;
use super::tokenizer::EOT_TEXT;

/// Text read per plain-text piece (more up to the next char boundary).
const BLOCK_BYTES: usize = 256 << 10;

/// An input file and its size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub bytes: u64,
}

/// How a file's documents are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    JsonLines,
    Parquet,
}

/// A compression a file is read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl InputFile {
    /// The format and compression its name says.
    fn kind(&self) -> (Format, Compression) {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase());
        let name = name.as_deref().unwrap_or("");
        let (inner, compression) = if let Some(inner) = name.strip_suffix(".gz") {
            (inner, Compression::Gzip)
        } else if let Some(inner) = name.strip_suffix(".zst") {
            (inner, Compression::Zstd)
        } else {
            (name, Compression::None)
        };
        let format = match inner.rsplit_once('.').map(|(_, ext)| ext) {
            Some("jsonl" | "ndjson") => Format::JsonLines,
            Some("json") if compression != Compression::None => Format::JsonLines,
            Some("parquet") => Format::Parquet,
            _ => Format::Text,
        };
        (format, compression)
    }
}

/// The files named by `paths`: files as given, directories walked in name order
/// (hidden entries skipped).
pub fn list_files(paths: &[PathBuf]) -> Result<Vec<InputFile>> {
    fn walk(path: &Path, out: &mut Vec<InputFile>) -> Result<()> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_file() {
            out.push(InputFile {
                path: path.to_path_buf(),
                bytes: meta.len(),
            });
            return Ok(());
        }
        let mut entries = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("cannot list {}", path.display()))?;
        entries.sort();
        for entry in entries {
            let hidden = entry
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden {
                walk(&entry, out)?;
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    for p in paths {
        walk(p, &mut files)?;
    }
    Ok(files)
}

/// A piece of a document's text.
#[derive(Clone, Debug)]
pub struct Piece {
    pub text: String,
    /// The first piece of a document (an end-of-text token goes before it).
    pub starts_document: bool,
    /// Input bytes consumed since the previous piece (for progress).
    pub source_bytes: u64,
}

/// Text from bytes, with invalid UTF-8 replaced; returns how many invalid
/// sequences were replaced.
fn lossy(bytes: Vec<u8>) -> (String, u64) {
    match String::from_utf8(bytes) {
        Ok(s) => (s, 0),
        Err(e) => {
            let bytes = e.into_bytes();
            let invalid = bytes
                .utf8_chunks()
                .filter(|c| !c.invalid().is_empty())
                .count() as u64;
            (String::from_utf8_lossy(&bytes).into_owned(), invalid)
        }
    }
}

/// Where to cut a block that has no newline: before the last character, which
/// may be incomplete (the rest follows in the next block).
fn char_boundary(bytes: &[u8]) -> usize {
    (bytes.len().saturating_sub(4)..bytes.len())
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
        .filter(|&i| i > 0)
        .unwrap_or(bytes.len())
}

/// A byte stream that counts what it has read of the file under it (compressed
/// bytes, for a compressed file), for progress.
struct Counted {
    file: File,
    read: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// What is read from an open file.
enum Body {
    /// Plain text, cut into blocks; `carry` holds bytes read past the last cut.
    Text {
        carry: Vec<u8>,
    },
    /// JSON Lines; `line` is the number of the last line read.
    Lines {
        line: usize,
    },
    Parquet(Box<ParquetColumn>),
}

struct OpenFile {
    path: PathBuf,
    /// The decompressed bytes (empty for Parquet, which reads by seeking).
    reader: Box<dyn BufRead + Send>,
    /// File bytes read so far, and how many of them were reported as progress.
    read: Arc<AtomicU64>,
    reported: u64,
    compression: Compression,
    body: Body,
}

impl OpenFile {
    fn open(f: &InputFile, field: &str) -> Result<OpenFile> {
        let (format, compression) = f.kind();
        let name = f.path.display();
        let read = Arc::new(AtomicU64::new(0));
        if format == Format::Parquet {
            if compression != Compression::None {
                bail!(
                    "{name}: a compressed Parquet file; Parquet compresses inside, decompress it first"
                );
            }
            return Ok(OpenFile {
                path: f.path.clone(),
                reader: Box::new(std::io::empty()),
                read,
                reported: 0,
                compression,
                body: Body::Parquet(Box::new(ParquetColumn::open(&f.path, field, f.bytes)?)),
            });
        }
        let file = File::open(&f.path).with_context(|| format!("cannot open {name}"))?;
        let counted = Counted {
            file,
            read: read.clone(),
        };
        let reader: Box<dyn BufRead + Send> = match compression {
            Compression::None => Box::new(BufReader::with_capacity(1 << 20, counted)),
            Compression::Gzip => Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(counted),
            )),
            Compression::Zstd => Box::new(BufReader::with_capacity(
                1 << 20,
                zstd::stream::read::Decoder::new(counted)
                    .with_context(|| format!("cannot read {name}"))?,
            )),
        };
        let body = if format == Format::JsonLines {
            Body::Lines { line: 0 }
        } else {
            Body::Text { carry: Vec::new() }
        };
        Ok(OpenFile {
            path: f.path.clone(),
            reader,
            read,
            reported: 0,
            compression,
            body,
        })
    }

    /// File bytes read since the last call.
    fn progress(&mut self) -> u64 {
        let now = match &self.body {
            Body::Parquet(p) => p.bytes_read(),
            _ => self.read.load(Ordering::Relaxed),
        };
        now - std::mem::replace(&mut self.reported, now)
    }
}

/// The error for a read of `path` that failed: a compressed file's is named
/// corrupt (its decoder fails on bad or truncated data).
fn read_error(path: &Path, compression: Compression, e: std::io::Error) -> anyhow::Error {
    let name = path.display();
    match compression {
        Compression::None => anyhow!("cannot read {name}: {e}"),
        Compression::Gzip => anyhow!("{name}: corrupt or truncated gzip data ({e})"),
        Compression::Zstd => anyhow!("{name}: corrupt or truncated zstd data ({e})"),
    }
}

/// Streams document pieces from a list of files.
pub struct DocumentReader {
    files: std::vec::IntoIter<InputFile>,
    current: Option<OpenFile>,
    jsonl_field: String,
    pending: std::collections::VecDeque<Piece>,
    /// The next non-empty text starts a new document.
    starts_document: bool,
    /// The last text read ended with a separator: a newline next is part of it.
    after_separator: bool,
    unreported_bytes: u64,
    /// Invalid UTF-8 sequences replaced so far, and in how many files.
    pub invalid_utf8: u64,
    pub files_with_invalid_utf8: u64,
    invalid_in_current: bool,
}

impl DocumentReader {
    pub fn new(files: Vec<InputFile>, jsonl_field: &str) -> DocumentReader {
        DocumentReader {
            files: files.into_iter(),
            current: None,
            jsonl_field: jsonl_field.to_string(),
            pending: Default::default(),
            starts_document: true,
            after_separator: false,
            unreported_bytes: 0,
            invalid_utf8: 0,
            files_with_invalid_utf8: 0,
            invalid_in_current: false,
        }
    }

    fn push(&mut self, text: &str) {
        if !text.is_empty() {
            self.pending.push_back(Piece {
                text: text.to_string(),
                starts_document: std::mem::take(&mut self.starts_document),
                source_bytes: std::mem::take(&mut self.unreported_bytes),
            });
        }
    }

    fn count_invalid(&mut self, n: u64) {
        if n > 0 {
            self.invalid_utf8 += n;
            if !std::mem::replace(&mut self.invalid_in_current, true) {
                self.files_with_invalid_utf8 += 1;
            }
        }
    }

    /// Reads the next block, line or batch of rows of the current file into
    /// `pending`; false at the end of the file.
    fn read_more(&mut self) -> Result<bool> {
        let file = self.current.as_mut().expect("a file is open");
        let more = match &mut file.body {
            Body::Text { carry } => {
                let mut block = std::mem::take(carry);
                let want = BLOCK_BYTES.saturating_sub(block.len()).max(1);
                let n = (&mut file.reader)
                    .take(want as u64)
                    .read_to_end(&mut block)
                    .map_err(|e| read_error(&file.path, file.compression, e))?;
                if n == want {
                    // Not the end of the file: cut before the last newline, so
                    // pieces break where a tokenizer would anyway and never inside
                    // a character, and a separator line arrives whole with the
                    // newline before it.
                    let cut = match block.iter().rposition(|&b| b == b'\n') {
                        Some(i) if i > 0 => i,
                        _ => char_boundary(&block),
                    };
                    *carry = block.split_off(cut);
                }
                self.unreported_bytes += file.progress();
                (!block.is_empty()).then_some(Chunk::Block(block))
            }
            Body::Lines { line } => {
                let mut bytes = Vec::new();
                let n = file
                    .reader
                    .read_until(b'\n', &mut bytes)
                    .map_err(|e| read_error(&file.path, file.compression, e))?;
                *line += 1;
                let at = format!("{}:{line}", file.path.display());
                self.unreported_bytes += file.progress();
                (n > 0).then_some(Chunk::Line(bytes, at))
            }
            Body::Parquet(column) => {
                let rows = column.next_batch()?;
                self.unreported_bytes += file.progress();
                rows.map(Chunk::Rows)
            }
        };
        match more {
            None => return Ok(false),
            Some(Chunk::Block(block)) => self.split_documents(block),
            Some(Chunk::Line(line, at)) => self.json_document(line, &at)?,
            Some(Chunk::Rows(rows)) => {
                for row in rows {
                    let (text, invalid) = lossy(row);
                    self.count_invalid(invalid);
                    self.starts_document = true;
                    self.push(&text);
                }
            }
        }
        Ok(true)
    }

    /// The documents of a plain-text block: a separator is <|endoftext|> with the
    /// newlines either side of it.
    fn split_documents(&mut self, block: Vec<u8>) {
        let (text, invalid) = lossy(block);
        self.count_invalid(invalid);
        let segments: Vec<&str> = text.split(EOT_TEXT).collect();
        let last = segments.len() - 1;
        for (i, mut segment) in segments.into_iter().enumerate() {
            if i > 0 {
                self.starts_document = true;
                self.after_separator = true;
            }
            if self.after_separator {
                segment = segment.strip_prefix('\n').unwrap_or(segment);
                self.after_separator = segment.is_empty();
            }
            if i < last {
                segment = segment.strip_suffix('\n').unwrap_or(segment);
            }
            self.push(segment);
        }
    }

    /// The document in a JSON Lines line (`at` is FILE:LINE); blank lines hold none.
    fn json_document(&mut self, line: Vec<u8>, at: &str) -> Result<()> {
        let (text, invalid) = lossy(line);
        self.count_invalid(invalid);
        if text.trim().is_empty() {
            return Ok(());
        }
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{at}: not JSON"))?;
        let Some(doc) = value.get(&self.jsonl_field).and_then(|v| v.as_str()) else {
            bail!(
                "{at}: no string field \"{}\" (choose one with --jsonl-field)",
                self.jsonl_field
            );
        };
        self.starts_document = true;
        self.push(doc);
        Ok(())
    }

    fn next_piece(&mut self) -> Result<Option<Piece>> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(Some(p));
            }
            if self.current.is_none() {
                let Some(f) = self.files.next() else {
                    return Ok(None);
                };
                self.current = Some(OpenFile::open(&f, &self.jsonl_field)?);
                self.starts_document = true;
                self.after_separator = false;
                self.invalid_in_current = false;
            }
            if !self.read_more()? {
                self.current = None;
            }
        }
    }
}

/// What one read of a file gave.
enum Chunk {
    Block(Vec<u8>),
    /// A JSON Lines line and where it is (FILE:LINE).
    Line(Vec<u8>, String),
    Rows(Vec<Vec<u8>>),
}

impl Iterator for DocumentReader {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Result<Piece>> {
        self.next_piece().transpose()
    }
}
