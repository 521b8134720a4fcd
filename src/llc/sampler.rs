//! SGLD localised at the weights w* under study, one piece of code for every model:
//!
//! ```text
//! w <- w - (eps/2) (nbeta grad L_B(w) + gamma (w - w*)) + N(0, eps)
//! ```
//!
//! Each chain starts at w*, runs `burnin` steps, then records `draws` more. At every
//! draw the same minibatch is also evaluated at w*, so the estimate
//! nbeta (mean L_B(w) - mean L_B(w*)) compares losses on identical data: the batch-to-
//! batch spread of the loss cancels, and with eps = 0 the estimate is exactly zero.
//! Unless fixed, the step size is tuned during each chain's burn-in ([`StepTuner`]);
//! chains can be added until the estimate is precise ([`RELATIVE_STANDARD_ERROR`]).
//!
//! The update runs where the model keeps its parameters ([`Backend::sgld_update`] on
//! the model's backend, or its CPU reference for models on the host), so a GPU model's
//! parameters never travel to the host; the sampler sees only losses.
//!
//! [`Backend::sgld_update`]: crate::backend::Backend::sgld_update

use anyhow::{Result, bail};
use indicatif::ProgressBar;
use serde::Serialize;

use super::stats::{mean, std_dev};
use crate::backend::SgldStep;

/// A model SGLD can sample. Its parameters w, the anchor w* and the last gradient
/// stay wherever the model keeps them.
pub trait SgldTarget {
    /// One minibatch of training data.
    type Batch;
    fn num_params(&self) -> usize;
    /// Examples per minibatch (the B in the default nbeta = B / ln B).
    fn batch_size(&self) -> usize;
    /// A fresh minibatch (the target owns its data order, seeded); an error if its
    /// data can no longer be read.
    fn next_batch(&mut self) -> Result<Self::Batch>;
    /// Puts the parameters back at w* (each chain's start, and the end of sampling).
    fn reset(&mut self);
    /// Mean loss on `batch` at the current parameters, keeping its gradient for the
    /// next [`SgldTarget::step`]; returns the loss and the gradient's squared norm.
    fn loss_and_grad(&mut self, batch: &Self::Batch) -> (f64, f64);
    /// Mean loss on `batch` at w*.
    fn anchor_loss(&mut self, batch: &Self::Batch) -> f64;
    /// One SGLD update of the parameters from the kept gradient.
    fn step(&mut self, step: SgldStep);
    /// The current parameters, read back to the host (for checks).
    fn params(&self) -> Vec<f32>;
}

/// The inverse temperature times the sample size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NBeta {
    /// B / ln B for batch size B (devinterp's default).
    Auto,
    Fixed(f64),
}

impl NBeta {
    /// "auto" or a positive number.
    pub fn parse(text: &str) -> Result<NBeta> {
        if text == "auto" {
            return Ok(NBeta::Auto);
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(NBeta::Fixed(v)),
            _ => bail!("--nbeta must be a positive number or \"auto\", got {text:?}"),
        }
    }

    pub fn resolve(self, batch_size: usize) -> f64 {
        match self {
            NBeta::Fixed(v) => v,
            // ln 1 = 0; a batch of one still needs a finite, positive nbeta.
            NBeta::Auto => batch_size as f64 / (batch_size.max(2) as f64).ln(),
        }
    }
}

/// How to sample; see the module docs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SgldSettings {
    pub chains: usize,
    pub draws: usize,
    pub burnin: usize,
    /// With more than `chains`: further chains, up to this many, until the standard
    /// error over chains is at most [`RELATIVE_STANDARD_ERROR`] of the estimate.
    pub max_chains: usize,
    /// The step size; with `tune_epsilon`, the step each chain starts from.
    pub epsilon: f64,
    /// Tune each chain's step during burn-in (see [`StepTuner`]); the draws then use
    /// the tuned step, unchanged.
    pub tune_epsilon: bool,
    pub gamma: f64,
    pub nbeta: f64,
    pub seed: u64,
}

impl SgldSettings {
    /// One line naming the first setting that makes no sense.
    pub fn validate(&self) -> Result<()> {
        if self.chains == 0 {
            bail!("--chains must be at least 1, got 0");
        }
        if self.max_chains > self.chains && self.chains < 2 {
            bail!("adding chains for precision needs at least 2 to start with, got 1");
        }
        if self.draws == 0 {
            bail!("--draws must be at least 1, got 0");
        }
        for (flag, v) in [("--epsilon", self.epsilon), ("--gamma", self.gamma)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{flag} must be a non-negative number, got {v}");
            }
        }
        if self.tune_epsilon && self.epsilon == 0.0 {
            bail!("a tuned --epsilon needs a positive starting step, got 0");
        }
        if !(self.nbeta.is_finite() && self.nbeta > 0.0) {
            bail!("--nbeta must be positive, got {}", self.nbeta);
        }
        Ok(())
    }
}

/// What one chain saw.
#[derive(Clone, Debug, Serialize)]
pub struct ChainTrace {
    /// L_B(w) at every step, burn-in included, before that step's update.
    pub losses: Vec<f64>,
    /// L_B(w*) on the batch of each draw (the draws are losses[burnin..]).
    pub init_losses: Vec<f64>,
    /// The step at which the chain was stopped for a non-finite or exploding loss.
    pub diverged_at: Option<usize>,
    /// The step size of the draws (tuned during burn-in, or the given one).
    pub epsilon: f64,
}

impl ChainTrace {
    /// The recorded draws' losses (shorter than `draws` if the chain diverged).
    pub fn draws(&self, burnin: usize) -> &[f64] {
        &self.losses[burnin.min(self.losses.len())..]
    }

    /// nbeta (L_B(w) - L_B(w*)) per draw.
    pub fn excess(&self, nbeta: f64, burnin: usize) -> Vec<f64> {
        self.draws(burnin)
            .iter()
            .zip(&self.init_losses)
            .map(|(l, l0)| nbeta * (l - l0))
            .collect()
    }

    /// This chain's estimate, the mean of its excess; NaN if it diverged or drew nothing.
    pub fn estimate(&self, nbeta: f64, burnin: usize) -> f64 {
        let excess = self.excess(nbeta, burnin);
        if excess.is_empty() || self.diverged_at.is_some() {
            return f64::NAN;
        }
        excess.iter().sum::<f64>() / excess.len() as f64
    }
}

/// nbeta (L - L_0) above this many times the parameter count means the chain has left
/// the basin: a regular model averages d/2.
const EXPLODING_PER_PARAM: f64 = 10.0;

/// The standard error over chains, as a share of the estimate, that chains are added
/// for (up to `max_chains`).
pub const RELATIVE_STANDARD_ERROR: f64 = 0.03;

/// Runs the chains one after another, leaving the target at w* afterwards.
pub fn sample<T: SgldTarget>(
    target: &mut T,
    s: &SgldSettings,
    progress: &ProgressBar,
) -> Result<Vec<ChainTrace>> {
    s.validate()?;
    let d = target.num_params();
    let steps = s.burnin + s.draws;
    let mut traces: Vec<ChainTrace> = Vec::with_capacity(s.chains);
    for chain in 0..s.max_chains.max(s.chains) {
        if chain >= s.chains {
            if precise_enough(&traces, s) {
                break;
            }
            progress.inc_length(steps as u64);
        }
        target.reset();
        let mut tuner = StepTuner::new(s);
        let mut trace = ChainTrace {
            losses: Vec::with_capacity(steps),
            init_losses: Vec::with_capacity(s.draws),
            diverged_at: None,
            epsilon: s.epsilon,
        };
        for step in 0..steps {
            let batch = target.next_batch()?;
            let (loss, grad_sq) = target.loss_and_grad(&batch);
            trace.losses.push(loss);
            let start = trace.losses[0];
            if !loss.is_finite() || s.nbeta * (loss - start) > EXPLODING_PER_PARAM * d as f64 {
                trace.diverged_at = Some(step);
                progress.inc((steps - step) as u64);
                break;
            }
            let drawing = step >= s.burnin;
            if drawing || tuner.measuring(step) {
                let anchor_loss = target.anchor_loss(&batch);
                if drawing {
                    trace.init_losses.push(anchor_loss);
                } else {
                    tuner.observe(step, loss - anchor_loss, grad_sq);
                }
            }
            trace.epsilon = tuner.epsilon;
            target.step(SgldStep::new(
                tuner.epsilon,
                s.nbeta,
                s.gamma,
                s.seed,
                chain as u64,
                step as u64,
            ));
            progress.inc(1);
        }
        traces.push(trace);
    }
    target.reset();
    Ok(traces)
}

/// Whether the chains so far pin the estimate down to [`RELATIVE_STANDARD_ERROR`]
/// (a diverged chain settles nothing: more chains will not help).
fn precise_enough(traces: &[ChainTrace], s: &SgldSettings) -> bool {
    let per_chain: Vec<f64> = traces
        .iter()
        .map(|t| t.estimate(s.nbeta, s.burnin))
        .collect();
    if per_chain.iter().any(|e| !e.is_finite()) {
        return true;
    }
    let standard_error = std_dev(&per_chain) / (per_chain.len() as f64).sqrt();
    standard_error <= RELATIVE_STANDARD_ERROR * mean(&per_chain).abs()
}

/// eps times the measured curvature that the tuned step aims at.
pub const STEP_CURVATURE: f64 = 0.15;
/// The burn-in is cut into this many windows; the step is set after each of the first
/// three quarters' windows, and the last quarter settles the chain at the final step.
const WINDOWS: usize = 12;
/// The most the step changes from one window to the next (either way), so one noisy
/// window cannot throw a chain out of its basin.
const MAX_CHANGE_PER_WINDOW: f64 = 2.0;

/// Tunes one chain's step size during burn-in so that eps k = [`STEP_CURVATURE`], k
/// being the curvature of the sampled potential U = nbeta L + gamma/2 |w - w*|^2 where
/// the chain moves, measured from quantities the sampler has anyway:
///
/// ```text
/// k = nbeta |grad L_B(w)|^2 / (2 (L_B(w) - L_B(w*))) + gamma
/// ```
///
/// For L = 1/2 sum h_i x_i^2 the first term is nbeta sum h_i^2 x_i^2 / sum h_i x_i^2:
/// each direction's curvature weighted by its share of the loss, that is of the
/// estimate. Why: SGLD with step eps spreads a direction of curvature k by
/// 1/(1 - eps k/4) too much, so the estimate's relative bias is about eps k/4 (under
/// 4% at the target), while a smaller step mixes more slowly within a fixed burn-in
/// (the target balances the two on deep linear networks, BENCHMARKS.md). A fixed eps
/// cannot hold that balance across models whose curvature differs by orders of
/// magnitude: deep linear networks at rank 0 are flat to high order at w* (k starts
/// tiny, and the step grows), deep ones at high rank stiffen as the chains spread
/// (the step shrinks). The minibatch gradient's norm includes its noise, which heats
/// the chain the same way.
struct StepTuner {
    epsilon: f64,
    nbeta: f64,
    gamma: f64,
    /// Steps per tuning window; 0 when not tuning.
    window: usize,
    grad_sq: f64,
    excess: f64,
}

impl StepTuner {
    fn new(s: &SgldSettings) -> StepTuner {
        StepTuner {
            epsilon: s.epsilon,
            nbeta: s.nbeta,
            gamma: s.gamma,
            window: if s.tune_epsilon {
                s.burnin / WINDOWS
            } else {
                0
            },
            grad_sq: 0.0,
            excess: 0.0,
        }
    }

    /// Whether `step` is in a window that sets the step (and needs L_B(w*)).
    fn measuring(&self, step: usize) -> bool {
        step < self.window * WINDOWS * 3 / 4
    }

    /// Adds one step's loss excess L_B(w) - L_B(w*) and |grad L_B(w)|^2, and at the
    /// end of a window sets the step from the window's sums.
    fn observe(&mut self, step: usize, excess: f64, grad_sq: f64) {
        self.excess += excess;
        self.grad_sq += grad_sq;
        if !(step + 1).is_multiple_of(self.window) {
            return;
        }
        // A chain below w*'s loss on average has no curvature to measure: keep the step.
        if self.excess > 0.0 && self.grad_sq.is_finite() {
            let k = self.nbeta * self.grad_sq / (2.0 * self.excess) + self.gamma;
            let f = MAX_CHANGE_PER_WINDOW;
            self.epsilon = (STEP_CURVATURE / k).clamp(self.epsilon / f, self.epsilon * f);
        }
        self.excess = 0.0;
        self.grad_sq = 0.0;
    }
}
