//! The run directory's lock: one process at a time trains, resumes or writes into a
//! run directory. An exclusive advisory lock (flock on Unix) on `<run>/hgpt.lock`,
//! which holds the holder's pid so that a second process can name it. The lock goes
//! with the process (a kill -9 frees it); the file stays, and is reused. A
//! directory the lock created and nothing else wrote into is removed with the lock,
//! so a command refused after taking it leaves nothing behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = "hgpt.lock";

/// The lock on a run directory, held until dropped.
pub struct RunLock {
    _file: File,
    /// The directory, when this lock created it.
    created: Option<PathBuf>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let Some(dir) = &self.created else { return };
        let only_the_lock = std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .map(|e| e.map(|e| e.file_name()))
                .all(|name| name.is_ok_and(|n| n == LOCK_FILE))
        });
        if only_the_lock {
            let _ = std::fs::remove_file(dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates `run` if needed and takes its lock; an error naming the holder's pid if
/// another process has it.
pub fn acquire(run: &Path) -> Result<RunLock> {
    let created = (!run.exists()).then(|| run.to_path_buf());
    std::fs::create_dir_all(run)
        .with_context(|| format!("cannot create run directory {}", run.display()))?;
    let path = run.join(LOCK_FILE);
    // No truncation on open: the file may hold the pid of a live holder.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            bail!(
                "{}: another hgpt process (pid {}) is using this run directory; wait for it or stop it",
                path.display(),
                if pid.is_empty() { "unknown" } else { pid }
            );
        }
        Err(TryLockError::Error(e)) => {
            bail!("cannot lock {}: {e}", path.display())
        }
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|_| file.flush())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(RunLock {
        _file: file,
        created,
    })
}
