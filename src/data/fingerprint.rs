//! The identity of a prepared data directory, recorded in each checkpoint so that a
//! resume can tell whether the data is still what the run trained on, wherever it
//! lives now and however its path is spelled.
//!
//! Per shard: its file name, size, modification time and a CRC-32 of its tokens.
//! The checksum costs nothing extra: loading already reads every token once (the
//! range check and the unigram entropy, [`super::shard::count_tokens`]), and the
//! CRC rides on that pass, chunk by chunk in parallel, combined in order.
//!
//! The size and the checksum decide. A modification time that differs alone (a
//! `touch`, a copy to another disk) is reported, not refused: it says nothing
//! about the content.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::MANIFEST_FILE;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFingerprint {
    /// The file's name in the data directory.
    pub file: String,
    pub bytes: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// CRC-32 of the tokens as little-endian u32, in hex.
    pub tokens_crc32: String,
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

/// The fingerprint of the shard file at `path`, whose tokens have CRC-32 `crc`.
pub fn fingerprint(path: &Path, crc: u32) -> Result<ShardFingerprint> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let file = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Ok(ShardFingerprint {
        file,
        bytes: meta.len(),
        mtime_ns,
        tokens_crc32: format!("{crc:08x}"),
    })
}

impl DataIdentity {
    /// The identity of the data directory `dir` whose shards are `train` and
    /// `val`, each with the CRC-32 of its tokens.
    pub fn of(
        dir: &Path,
        train: &[(PathBuf, u32)],
        val: &[(PathBuf, u32)],
    ) -> Result<DataIdentity> {
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
        let prints = |files: &[(PathBuf, u32)]| {
            files
                .iter()
                .map(|(f, crc)| fingerprint(f, *crc))
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
    /// split, the same shard names, sizes and token checksums. An error naming the first
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
                if w.tokens_crc32 != i.tokens_crc32 {
                    bail!(
                        "{path}: changed since the checkpoint was written (same size, different tokens); restore it or start a new run"
                    );
                }
                if w.mtime_ns != i.mtime_ns {
                    touched.push(path.to_string());
                }
            }
        }
        if let Some(first) = touched.first() {
            notes.push(format!(
                "note: {} shard(s) (first: {first}) modified since the checkpoint was written, with the same size and tokens: resuming on them",
                touched.len()
            ));
        }
        Ok(notes)
    }
}
