//! From chain traces to lambda-hat, with the diagnostics that say whether to trust it.

use serde::Serialize;

use super::sampler::{ChainTrace, SgldSettings};
use super::stats::{mean, std_dev};

/// A share of draws below the starting loss above this means w* is not a minimum.
const MAX_FRACTION_BELOW: f64 = 0.3;
/// The rise between the halves of the draws, relative to the estimate, that counts
/// as a trace still climbing (when also beyond two standard errors over chains).
const MAX_RELATIVE_RISE: f64 = 0.1;

/// lambda-hat and its diagnostics; the traces ride along for the JSON file and plot.
#[derive(Clone, Debug, Serialize)]
pub struct LlcEstimate {
    /// Mean over chains of nbeta (mean L_B(w) - mean L_B(w*)).
    pub estimate: f64,
    /// Standard deviation of the per-chain estimates (0 for one chain).
    pub std: f64,
    /// Mean of L_B(w*) over the draws' batches: the loss at the weights.
    pub init_loss: f64,
    pub chain_estimates: Vec<f64>,
    /// Share of draws whose loss is below L_B(w*) on the same batch.
    pub fraction_below_init: f64,
    /// Whether the mean loss of the second half of the draws is no higher than the
    /// first's (beyond noise).
    pub levelled: bool,
    pub diverged_chains: usize,
    /// Mean over chains of the draws' step size (tuned during burn-in unless fixed).
    pub epsilon: f64,
    /// Plain-language reasons not to trust the estimate; empty when healthy.
    pub warnings: Vec<String>,
    pub settings: SgldSettings,
    pub num_params: usize,
    pub batch_size: usize,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traces: Vec<ChainTrace>,
}

impl LlcEstimate {
    pub fn new(
        traces: Vec<ChainTrace>,
        settings: SgldSettings,
        num_params: usize,
        batch_size: usize,
        seconds: f64,
    ) -> LlcEstimate {
        let nbeta = settings.nbeta;
        let burnin = settings.burnin;
        // Per chain: (estimate, rise from the first to the second half of the draws).
        let per_chain: Vec<(f64, f64)> = traces
            .iter()
            .map(|t| {
                let excess = t.excess(nbeta, burnin);
                let estimate = t.estimate(nbeta, burnin);
                let half = excess.len() / 2;
                let rise = if !estimate.is_finite() {
                    f64::NAN
                } else if half == 0 {
                    0.0
                } else {
                    mean(&excess[excess.len() - half..]) - mean(&excess[..half])
                };
                (estimate, rise)
            })
            .collect();
        let chain_estimates: Vec<f64> = per_chain.iter().map(|p| p.0).collect();
        let rises: Vec<f64> = per_chain.iter().map(|p| p.1).collect();
        let estimate = mean(&chain_estimates);
        let std = std_dev(&chain_estimates);
        let init: Vec<f64> = traces.iter().flat_map(|t| t.init_losses.clone()).collect();
        let below = traces
            .iter()
            .flat_map(|t| t.draws(burnin).iter().zip(&t.init_losses))
            .filter(|(l, l0)| l < l0)
            .count();
        let rise = mean(&rises);
        let rise_se = std_dev(&rises) / (rises.len() as f64).sqrt();
        let levelled = !(rise > 2.0 * rise_se && rise > MAX_RELATIVE_RISE * estimate.abs());
        let mut e = LlcEstimate {
            estimate,
            std,
            init_loss: mean(&init),
            chain_estimates,
            fraction_below_init: below as f64 / init.len().max(1) as f64,
            levelled,
            diverged_chains: traces.iter().filter(|t| t.diverged_at.is_some()).count(),
            epsilon: mean(&traces.iter().map(|t| t.epsilon).collect::<Vec<_>>()),
            warnings: Vec::new(),
            settings,
            num_params,
            batch_size,
            seconds,
            traces,
        };
        e.warnings = e.diagnose();
        e
    }

    fn diagnose(&self) -> Vec<String> {
        let s = &self.settings;
        let mut w = Vec::new();
        if self.diverged_chains > 0 {
            w.push(format!(
                "{} of {} chains diverged (a NaN or a loss far above the start): the step is too large, lower --epsilon",
                self.diverged_chains,
                self.traces.len()
            ));
        } else if self.estimate < 0.0 {
            w.push(
                "the estimate is negative: the sampler found lower loss near these weights, so they are not a local minimum (or --epsilon is too large)"
                    .into(),
            );
        }
        if self.diverged_chains == 0 && self.fraction_below_init > MAX_FRACTION_BELOW {
            w.push(format!(
                "{:.0}% of draws are below the loss at the weights: they are not at a local minimum; raise --gamma to stay closer, or do not trust this value",
                100.0 * self.fraction_below_init
            ));
        }
        if self.diverged_chains == 0 && !self.levelled {
            w.push(
                "the loss trace is still rising at the end: the chains have not settled; use more --burnin, a larger --gamma or a larger --epsilon"
                    .into(),
            );
        }
        if s.burnin < s.draws {
            w.push(format!(
                "--burnin {} is shorter than --draws {}: early draws may not have settled",
                s.burnin, s.draws
            ));
        }
        w
    }

    /// The same estimate without the per-step traces (for one-line JSON output).
    pub fn without_traces(&self) -> LlcEstimate {
        LlcEstimate {
            traces: Vec::new(),
            ..self.clone()
        }
    }

    /// Whether nothing argues against the estimate.
    pub fn trustworthy(&self) -> bool {
        self.warnings.is_empty()
    }
}
