//! The local learning coefficient (LLC): how degenerate the loss landscape is around
//! a set of weights w*, estimated by SGLD localised at w* (docs/DESIGN.md section 7).
//!
//! `sampler` is the one SGLD loop, generic over the model through [`SgldTarget`];
//! `estimate` turns its traces into lambda-hat and diagnostics, with `stats` (the
//! mean and standard deviation both use). The targets: `gpt` (the model being
//! trained, on its own backend), and through `host_target` two small host models:
//! `dln` (deep linear networks, whose exact value `aoyagi` gives, validating the
//! sampler) and `layernorm_mlp` (a LayerNorm example with a sudden loss drop).
//! `over_training` keeps the LLC across checkpoints, `plot` draws it and the
//! chains' traces. Progress goes to an `indicatif::ProgressBar` the caller makes
//! (hidden or drawn); `hgpt llc` is src/cli/llc.rs.

pub mod aoyagi;
pub mod dln;
pub mod estimate;
pub mod gpt;
pub mod host_target;
pub mod layernorm_mlp;
pub mod over_training;
pub mod plot;
pub mod sampler;
mod stats;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::ProgressBar;

pub use estimate::LlcEstimate;
pub use host_target::{HostModel, HostTarget};
pub use sampler::{NBeta, SgldSettings, SgldTarget};

/// Samples `target` at its current parameters and returns the estimate.
pub fn estimate<T: SgldTarget>(
    target: &mut T,
    settings: &SgldSettings,
    progress: &ProgressBar,
) -> Result<LlcEstimate> {
    let start = Instant::now();
    let traces = sampler::sample(target, settings, progress)?;
    Ok(LlcEstimate::new(
        traces,
        *settings,
        target.num_params(),
        target.batch_size(),
        start.elapsed().as_secs_f64(),
    ))
}

/// Writes `llc.json` (estimate, diagnostics and every chain's trace) and `llc.png`
/// (the traces) into `dir`.
pub fn write_outputs(dir: &Path, est: &LlcEstimate, title: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    let json = dir.join("llc.json");
    std::fs::write(&json, serde_json::to_string(est)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    plot::plot_traces(&dir.join("llc.png"), title, est)
}
