//! Resuming from an earlier checkpoint than the latest (`--from-step N`): the
//! checkpoints after step N belong to a branch of the run that will not go on, so
//! they are moved, never deleted, into `RUN/checkpoints/abandoned-<UTC time>/`,
//! and `latest` names step N again. Moving a directory is one rename, so a crash
//! part-way loses nothing: every step directory is either still in place or aside.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{LATEST_FILE, atomic, checkpoints_dir, list, step_dir_name};

/// Where a run's later checkpoints went.
#[derive(Debug)]
pub struct Abandoned {
    /// `RUN/checkpoints/abandoned-<UTC time>`.
    pub dir: PathBuf,
    /// The steps moved there, oldest first.
    pub steps: Vec<usize>,
}

/// Moves the checkpoints of `run` after `step` into a new abandoned directory and
/// points `latest` at `step`. None when no checkpoint is newer than `step`.
pub fn after(run: &Path, step: usize) -> Result<Option<Abandoned>> {
    let later: Vec<(usize, PathBuf)> = list(run)?.split_off(&(step + 1)).into_iter().collect();
    if later.is_empty() {
        return Ok(None);
    }
    let dir = fresh_dir(run)?;
    for (s, from) in &later {
        let to = dir.join(step_dir_name(*s));
        std::fs::rename(from, &to)
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
    }
    atomic::sync_dir(&dir)?;
    let root = checkpoints_dir(run);
    atomic::replace_file(
        &root.join(LATEST_FILE),
        format!("{}\n", step_dir_name(step)).as_bytes(),
    )?;
    Ok(Some(Abandoned {
        dir,
        steps: later.into_iter().map(|(s, _)| s).collect(),
    }))
}

/// A new `abandoned-<UTC time>` directory (with a counter when that second's is
/// taken, so an earlier abandoned branch is never mixed in).
fn fresh_dir(run: &Path) -> Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let root = checkpoints_dir(run);
    let mut n = 1;
    loop {
        let name = match n {
            1 => format!("abandoned-{stamp}"),
            _ => format!("abandoned-{stamp}-{n}"),
        };
        let dir = root.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
}
