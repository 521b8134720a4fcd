//! The identity of a prepared data directory, recorded in each checkpoint so that a
//! resume can tell whether the data is still what the run trained on, wherever it
//! lives now and however its path is spelled.
//!
//! Per shard: its file name, size, modification time and a SHA-256 of samples of
//! it: the 1024-byte header and [`SAMPLES`] blocks of [`SAMPLE_BYTES`] at evenly
//! spaced offsets, the last ending at the end of the file (the whole file when it
//! is no longer than that). Reading 17 blocks per shard keeps a resume on hundreds
//! of gigabyte-sized shards instant; a change that touches no sample goes unseen.
//!
//! The size and the samples decide. A modification time that differs alone (a
//! `touch`, a copy to another disk) is reported, not refused: it says nothing
//! about the content.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::MANIFEST_FILE;
use super::shard::HEADER_BYTES;

/// Blocks sampled per shard besides the header.
pub const SAMPLES: u64 = 16;
pub const SAMPLE_BYTES: u64 = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFingerprint {
    /// The file's name in the data directory.
    pub file: String,
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// SHA-256 of the header and the sampled blocks.
    pub sample_sha256: String,
}

/// What a checkpoint records of its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// The directory's canonical absolute path when the checkpoint was written.
    pub dir: String,
    /// SHA-256 of manifest.json; None for a directory without one (llm.c's).
    pub manifest_sha256: Option<String>,
    pub train: Vec<ShardFingerprint>,
    pub val: Vec<ShardFingerprint>,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of the shard file at `path`.
pub fn fingerprint(path: &Path) -> Result<ShardFingerprint> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = meta.len();
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let header = HEADER_BYTES as u64;
    let body = bytes.saturating_sub(header);
    let ranges: Vec<(u64, u64)> = if body <= SAMPLES * SAMPLE_BYTES {
        vec![(0, bytes)]
    } else {
        let last = bytes - SAMPLE_BYTES;
        std::iter::once((0, header))
            .chain((0..SAMPLES).map(|i| {
                let at = header + (last - header) * i / (SAMPLES - 1);
                (at, SAMPLE_BYTES)
            }))
            .collect()
    };
    let mut hash = Sha256::new();
    let mut buf = Vec::new();
    for (at, len) in ranges {
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, at)
            .with_context(|| format!("cannot read {}", path.display()))?;
        hash.update(&buf);
    }
    let file_name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Ok(ShardFingerprint {
        file: file_name,
        bytes,
        mtime_ns,
        sample_sha256: hex(&hash.finalize()),
    })
}

impl DataIdentity {
    /// The identity of the data directory `dir` whose shards are `train` and `val`.
    pub fn of(dir: &Path, train: &[PathBuf], val: &[PathBuf]) -> Result<DataIdentity> {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        let manifest = dir.join(MANIFEST_FILE);
        let manifest_sha256 = manifest
            .exists()
            .then(|| {
                std::fs::read(&manifest)
                    .map(|b| hex(&Sha256::digest(&b)))
                    .with_context(|| format!("cannot read {}", manifest.display()))
            })
            .transpose()?;
        let prints = |files: &[PathBuf]| {
            files
                .iter()
                .map(|f| fingerprint(f))
                .collect::<Result<Vec<_>>>()
        };
        Ok(DataIdentity {
            dir: canonical.display().to_string(),
            manifest_sha256,
            train: prints(train)?,
            val: prints(val)?,
        })
    }

    /// Whether `now` is the data `self` recorded: the same manifest and, split by
    /// split, the same shard names, sizes and samples. An error naming the first
    /// shard that differs; else notes for the user (data found at another path,
    /// shards touched without a change of content).
    pub fn check_same(&self, now: &DataIdentity) -> Result<Vec<String>> {
        let (mut notes, mut touched) = (Vec::new(), Vec::new());
        if now.dir != self.dir {
            notes.push(format!(
                "note: the data is now at {} (the checkpoint's was at {}); its shards are the same",
                now.dir, self.dir
            ));
        }
        if now.manifest_sha256 != self.manifest_sha256 {
            bail!(
                "{}/{MANIFEST_FILE} differs from the one of the checkpoint's data ({}): not the same prepared data",
                now.dir,
                self.dir
            );
        }
        for (split, was, is) in [
            ("train", &self.train, &now.train),
            ("val", &self.val, &now.val),
        ] {
            if was.len() != is.len() {
                bail!(
                    "{}: {} {split} shards, but the checkpoint's data had {}",
                    now.dir,
                    is.len(),
                    was.len()
                );
            }
            for (w, i) in was.iter().zip(is) {
                let path = Path::new(&now.dir).join(&i.file);
                let path = path.display();
                if w.file != i.file {
                    bail!("{path}: in place of {} of the checkpoint's data", w.file);
                }
                if w.bytes != i.bytes {
                    bail!(
                        "{path}: changed since the checkpoint was written ({} bytes, then {}); restore it or start a new run",
                        i.bytes,
                        w.bytes
                    );
                }
                if w.sample_sha256 != i.sample_sha256 {
                    bail!(
                        "{path}: changed since the checkpoint was written (same size, different content); restore it or start a new run"
                    );
                }
                if w.mtime_ns != i.mtime_ns {
                    touched.push(path.to_string());
                }
            }
        }
        if let Some(first) = touched.first() {
            notes.push(format!(
                "note: {} shard(s) (first: {first}) modified since the checkpoint was written, with the same size and sampled content: resuming on them",
                touched.len()
            ));
        }
        Ok(notes)
    }
}
