//! Training metrics: metrics.jsonl in the run directory (one JSON object per log
//! step, per evaluation and per skipped step), and the records kept for the plot.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainRecord {
    pub step: usize,
    pub train_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    pub step: usize,
    pub val_loss: f64,
}

/// A step whose update the divergence guard skipped (non-finite values are
/// written as null). Its train_loss is always null: a loss that came with a
/// non-finite gradient norm belongs to no trained model, so no reader may mistake
/// it for one.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SkippedRecord {
    pub step: usize,
    pub train_loss: Option<f64>,
    pub grad_norm: f64,
    pub skipped: bool,
}

/// A line of metrics.jsonl that the plot shows.
#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Train(TrainRecord),
    Eval(EvalRecord),
}

/// The training and evaluation records of metrics.jsonl up to `last_step`. Lines
/// past a checkpoint come from a run that died after it (a resumed run writes
/// those steps again), so a reader at that checkpoint stops there.
pub fn read_records(path: &Path, last_step: usize) -> Result<(Vec<TrainRecord>, Vec<EvalRecord>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for record in text.lines().filter_map(|l| serde_json::from_str(l).ok()) {
        match record {
            Record::Train(r) if r.step <= last_step => train.push(r),
            Record::Eval(r) if r.step <= last_step => eval.push(r),
            _ => {}
        }
    }
    Ok((train, eval))
}

pub struct Metrics {
    file: BufWriter<File>,
    pub train: Vec<TrainRecord>,
    pub eval: Vec<EvalRecord>,
}

impl Metrics {
    /// Opens metrics.jsonl for appending. When resuming (first_step > 0) the
    /// records up to first_step are read back, so the loss plot shows the whole run.
    pub fn create(path: &Path, first_step: usize) -> Result<Metrics> {
        let (train, eval) = if first_step > 0 && path.exists() {
            read_records(path, first_step)?
        } else {
            Default::default()
        };
        let file = File::options()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Metrics {
            file: BufWriter::new(file),
            train,
            eval,
        })
    }

    fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        serde_json::to_writer(&mut self.file, record)?;
        self.file.write_all(b"\n")?;
        self.file.flush()?;
        Ok(())
    }

    pub fn log_train(&mut self, r: TrainRecord) -> Result<()> {
        self.append(&r)?;
        self.train.push(r);
        Ok(())
    }

    pub fn log_eval(&mut self, r: EvalRecord) -> Result<()> {
        self.append(&r)?;
        self.eval.push(r);
        Ok(())
    }

    pub fn log_skipped(&mut self, r: SkippedRecord) -> Result<()> {
        self.append(&r)
    }
}
