//! Token shards in llm.c's format, so its data scripts' output loads as is.
//!
//! A shard is a header of 256 little-endian i32 (magic, version, token count, then
//! zeros) followed by the tokens: u16 (magic 20240520, version 1) when the
//! vocabulary fits, u32 (magic 20240801, version 7) when it exceeds 65536.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rayon::prelude::*;

pub const HEADER_INTS: usize = 256;
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// How tokens are stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    /// The narrowest width that holds every id of a `vocab_size` vocabulary.
    pub fn for_vocab(vocab_size: usize) -> TokenWidth {
        if vocab_size <= 1 << 16 {
            TokenWidth::U16
        } else {
            TokenWidth::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            TokenWidth::U16 => 2,
            TokenWidth::U32 => 4,
        }
    }

    /// (magic, version) written in the header.
    pub fn magic_version(self) -> (i32, i32) {
        match self {
            TokenWidth::U16 => (20240520, 1),
            TokenWidth::U32 => (20240801, 7),
        }
    }

    fn from_header(magic: i32, version: i32, path: &Path) -> Result<TokenWidth> {
        let width = match magic {
            20240520 => TokenWidth::U16,
            20240801 => TokenWidth::U32,
            _ => bail!(
                "{}: not a token shard (magic {magic}, expected 20240520 or 20240801)",
                path.display()
            ),
        };
        if width.magic_version().1 != version {
            bail!(
                "{}: unknown shard version {version} for magic {magic} (expected {})",
                path.display(),
                width.magic_version().1
            );
        }
        Ok(width)
    }
}

/// Writes one shard under a temporary name and renames it into place when
/// finished, so an interrupted write never leaves a complete-looking shard.
pub struct ShardWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    width: TokenWidth,
    count: u64,
    finished: bool,
}

impl ShardWriter {
    pub fn create(path: &Path, width: TokenWidth) -> Result<ShardWriter> {
        let tmp = temp_path(path);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // The real header goes in at finish(), once the count is known.
        out.write_all(&[0u8; HEADER_BYTES])
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(ShardWriter {
            out,
            tmp,
            path: path.to_path_buf(),
            width,
            count: 0,
            finished: false,
        })
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends tokens; each must fit the shard's width (the caller's tokenizer
    /// chose the width from its vocabulary).
    pub fn write(&mut self, tokens: &[u32]) -> Result<()> {
        let mut buf = Vec::with_capacity(tokens.len() * self.width.bytes());
        match self.width {
            TokenWidth::U16 => {
                for &t in tokens {
                    let t = u16::try_from(t).expect("token fits the shard width");
                    buf.extend_from_slice(&t.to_le_bytes());
                }
            }
            TokenWidth::U32 => tokens
                .iter()
                .for_each(|t| buf.extend_from_slice(&t.to_le_bytes())),
        }
        self.out
            .write_all(&buf)
            .with_context(|| format!("cannot write {}", self.tmp.display()))?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// Writes the header, syncs and renames the shard into place; returns its
    /// token count.
    pub fn finish(mut self) -> Result<u64> {
        let context = || format!("cannot write {}", self.tmp.display());
        let count = i32::try_from(self.count).with_context(|| {
            format!(
                "{}: {} tokens do not fit a shard header (at most {})",
                self.path.display(),
                self.count,
                i32::MAX
            )
        })?;
        self.out.seek(SeekFrom::Start(0)).with_context(context)?;
        self.out
            .write_all(&header(self.width, count))
            .with_context(context)?;
        self.out.flush().with_context(context)?;
        self.out.get_ref().sync_all().with_context(context)?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.tmp.display(),
                self.path.display()
            )
        })?;
        self.finished = true;
        Ok(self.count)
    }
}

impl Drop for ShardWriter {
    /// A writer dropped unfinished (an error elsewhere) removes its partial file.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The name a shard has while it is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// The 1024-byte header for `count` tokens of `width`.
fn header(width: TokenWidth, count: i32) -> Vec<u8> {
    let (magic, version) = width.magic_version();
    let mut ints = [0i32; HEADER_INTS];
    ints[..3].copy_from_slice(&[magic, version, count]);
    ints.iter().flat_map(|i| i.to_le_bytes()).collect()
}

/// Writes a whole shard at once.
pub fn write_shard(path: &Path, tokens: &[u32], width: TokenWidth) -> Result<()> {
    let mut w = ShardWriter::create(path, width)?;
    w.write(tokens)?;
    w.finish().map(drop)
}

enum Storage {
    /// A shard file, read with positioned reads: a file cut short while in use
    /// gives an error naming it (a memory map would kill the process with SIGBUS).
    File {
        file: File,
        width: TokenWidth,
    },
    Memory(Vec<u32>),
}

/// A read-only token sequence: a shard file, or tokens in memory (the built-in
/// corpus) served through the same loader.
pub struct Shard {
    name: String,
    storage: Storage,
    len: usize,
}

impl Shard {
    /// Opens a shard file and checks its header against its size.
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len() as usize;
        if size < HEADER_BYTES {
            bail!(
                "{}: truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header",
                path.display()
            );
        }
        let mut header = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut header, 0)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let int = |i: usize| i32::from_le_bytes(header[4 * i..4 * i + 4].try_into().unwrap());
        let width = TokenWidth::from_header(int(0), int(1), path)?;
        let count = int(2);
        if count < 0 {
            bail!("{}: negative token count {count} in header", path.display());
        }
        let count = count as usize;
        let expected = HEADER_BYTES + count * width.bytes();
        if size < expected {
            bail!(
                "{}: truncated: header says {count} tokens ({expected} bytes) but the file has {size} bytes",
                path.display()
            );
        }
        if size > expected {
            bail!(
                "{}: header says {count} tokens ({expected} bytes) but the file has {size} bytes",
                path.display()
            );
        }
        Ok(Shard {
            name: path.display().to_string(),
            storage: Storage::File { file, width },
            len: count,
        })
    }

    pub fn in_memory(name: &str, tokens: Vec<u32>) -> Shard {
        Shard {
            name: name.to_string(),
            len: tokens.len(),
            storage: Storage::Memory(tokens),
        }
    }

    /// The file path, or the in-memory source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends tokens `start..start + n` to `out`; an error naming the shard if its
    /// file no longer holds them (cut short or replaced since it was opened).
    pub fn read(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        assert!(start + n <= self.len, "read past the end of {}", self.name);
        match &self.storage {
            Storage::Memory(tokens) => out.extend_from_slice(&tokens[start..start + n]),
            Storage::File { file, width } => {
                let w = width.bytes();
                let mut bytes = vec![0u8; n * w];
                file.read_exact_at(&mut bytes, (HEADER_BYTES + start * w) as u64)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => anyhow!(
                            "{}: shorter than when it was opened ({} tokens): the shard changed while in use; restore it",
                            self.name,
                            self.len
                        ),
                        _ => anyhow!("cannot read {}: {e}", self.name),
                    })?;
                match width {
                    TokenWidth::U16 => out.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32),
                    ),
                    TokenWidth::U32 => out.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    ),
                }
            }
        }
        Ok(())
    }
}

/// What one pass over every token of some shards finds.
pub struct TokenScan {
    /// How often each token id occurs (the table is as long as one past the
    /// largest id found).
    pub counts: Vec<u64>,
    /// The largest id in each shard (None for an empty one).
    pub max: Vec<Option<u32>>,
    /// CRC-32 of each shard's tokens (as little-endian u32): its content, for
    /// telling whether a shard changed (see [`super::fingerprint`]).
    pub crc32: Vec<u32>,
}

/// Counts, largest ids and content checksums of `shards`, in parallel chunks. An
/// id at or above `vocab` (which `vocab_source` names) is an error found before
/// any table grows to it: a u32 id would size a table of up to 34 GB.
pub fn count_tokens(shards: &[Shard], vocab: usize, vocab_source: &str) -> Result<TokenScan> {
    const CHUNK: usize = 1 << 22;
    let chunks: Vec<(usize, usize)> = shards
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.len()).step_by(CHUNK).map(move |start| (i, start)))
        .collect();
    let partial: Vec<(usize, Vec<u64>, crc32fast::Hasher)> = chunks
        .par_iter()
        .map(|&(i, start)| {
            let n = CHUNK.min(shards[i].len() - start);
            let mut tokens = Vec::with_capacity(n);
            shards[i].read(start, n, &mut tokens)?;
            if let Some(&token) = tokens.iter().filter(|&&t| t as usize >= vocab).max() {
                bail!(
                    "{}: holds token {token}, outside {vocab_source} ({vocab} tokens)",
                    shards[i].name()
                );
            }
            let mut crc = crc32fast::Hasher::new();
            let mut bytes = [0u8; 4096];
            for block in tokens.chunks(1024) {
                for (b, t) in bytes.chunks_exact_mut(4).zip(block) {
                    b.copy_from_slice(&t.to_le_bytes());
                }
                crc.update(&bytes[..4 * block.len()]);
            }
            let largest = tokens.iter().max().map_or(0, |&t| t as usize + 1);
            let mut counts = vec![0u64; largest];
            for t in tokens {
                counts[t as usize] += 1;
            }
            Ok((i, counts, crc))
        })
        .collect::<Result<_>>()?;
    let mut total = Vec::new();
    let mut max = vec![None; shards.len()];
    let mut crcs = vec![crc32fast::Hasher::new(); shards.len()];
    // Chunks come in order, so each shard's checksums combine into its own.
    for (i, counts, crc) in partial {
        crcs[i].combine(&crc);
        if total.len() < counts.len() {
            total.resize(counts.len(), 0);
        }
        for (id, &c) in counts.iter().enumerate() {
            total[id] += c;
        }
        let chunk_max = counts.iter().rposition(|&c| c > 0).map(|m| m as u32);
        max[i] = max[i].max(chunk_max);
    }
    Ok(TokenScan {
        counts: total,
        max,
        crc32: crcs.into_iter().map(crc32fast::Hasher::finalize).collect(),
    })
}
