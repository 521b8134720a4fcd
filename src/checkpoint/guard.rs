//! Where a command may write: never into a checkpoint directory (one holding
//! state.json), a run directory (one holding checkpoints/ and config.toml), or over
//! the command's own input. Paths are compared canonical, so `./x`, `x/` and an
//! absolute spelling are one place; an output that does not exist yet is judged by
//! its nearest existing ancestor.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::{RUN_CONFIG_FILE, STATE_FILE, checkpoints_dir};

/// `path` made absolute and canonical: its nearest existing ancestor canonicalized,
/// with the rest of the path appended.
fn canonical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    loop {
        if let Ok(c) = base.canonicalize() {
            return rest.iter().rev().fold(c, |p, part| p.join(part));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses `out` (what `flag` names, e.g. "--out") when it is or lies inside a
/// checkpoint or run directory, or when it is, holds or lies inside one of
/// `inputs`.
pub fn check_output(flag: &str, out: &Path, inputs: &[&Path]) -> Result<()> {
    let target = canonical(out);
    for dir in target.ancestors() {
        if dir.join(STATE_FILE).is_file() {
            bail!(
                "{flag} {}: inside the checkpoint directory {}, which it would overwrite; pick another {flag}",
                out.display(),
                dir.display()
            );
        }
        if checkpoints_dir(dir).is_dir() && dir.join(RUN_CONFIG_FILE).is_file() {
            bail!(
                "{flag} {}: inside the run directory {}, which it would overwrite; pick another {flag}",
                out.display(),
                dir.display()
            );
        }
    }
    for input in inputs {
        let input_at = canonical(input);
        if target.starts_with(&input_at) || input_at.starts_with(&target) {
            bail!(
                "{flag} {}: overlaps the input {}; pick another {flag}",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}
