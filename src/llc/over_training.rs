//! The LLC across a training run: one record per checkpoint in `llc.jsonl`, and
//! `llc_over_training.png` with the training loss and the LLC on a shared step axis.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::estimate::LlcEstimate;
use super::plot::{StepPoint, plot_over_training};

/// One line of llc.jsonl: the estimate at one checkpoint and its diagnostics.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepLlc {
    pub step: usize,
    pub estimate: f64,
    pub std: f64,
    pub init_loss: f64,
    pub fraction_below_init: f64,
    pub levelled: bool,
    pub diverged_chains: usize,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

impl StepLlc {
    pub fn new(step: usize, e: &LlcEstimate) -> StepLlc {
        StepLlc {
            step,
            estimate: e.estimate,
            std: e.std,
            init_loss: e.init_loss,
            fraction_below_init: e.fraction_below_init,
            levelled: e.levelled,
            diverged_chains: e.diverged_chains,
            warnings: e.warnings.clone(),
            seconds: e.seconds,
        }
    }
}

/// Appends records to llc.jsonl as they come, so a long run leaves what it has.
pub struct LlcLog {
    file: BufWriter<File>,
    pub records: Vec<StepLlc>,
}

impl LlcLog {
    /// Starts `path` afresh.
    pub fn create(path: &Path) -> Result<LlcLog> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(LlcLog {
            file: BufWriter::new(file),
            records: Vec::new(),
        })
    }

    pub fn push(&mut self, record: StepLlc) -> Result<()> {
        serde_json::to_writer(&mut self.file, &record)?;
        writeln!(self.file)?;
        self.file.flush()?;
        self.records.push(record);
        Ok(())
    }

    /// Draws the LLC beside `train_loss` (step, loss) into `png`.
    pub fn plot(&self, png: &Path, title: &str, train_loss: &[(usize, f64)]) -> Result<()> {
        let points: Vec<StepPoint> = self
            .records
            .iter()
            .map(|r| StepPoint {
                step: r.step,
                llc: r.estimate,
                llc_std: r.std,
                warned: !r.warnings.is_empty(),
            })
            .collect();
        plot_over_training(png, title, &points, train_loss)
    }
}
