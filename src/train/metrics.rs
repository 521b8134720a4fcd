//! Training metrics: metrics.jsonl in the run directory (one JSON object per log
//! step, per evaluation and per skipped step), and the records kept for the plot.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::observe::Observer;

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

/// What metrics.jsonl holds up to a step.
#[derive(Debug, Default)]
pub struct Records {
    pub train: Vec<TrainRecord>,
    pub eval: Vec<EvalRecord>,
    /// Numbers (from 1) of the lines that are not JSON: a damaged log. A log never
    /// blocks a checkpoint, so these are skipped, not an error.
    pub damaged: Vec<usize>,
}

/// The training and evaluation records of metrics.jsonl up to `last_step`. Lines
/// past a checkpoint come from a run that died after it (a resumed run writes
/// those steps again), so a reader at that checkpoint stops there.
pub fn read_records(path: &Path, last_step: usize) -> Result<Records> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = Records::default();
    for (number, line) in lines(&bytes) {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Err(_) => records.damaged.push(number),
            Ok(value) => match serde_json::from_value(value) {
                Ok(Record::Train(r)) if r.step <= last_step => records.train.push(r),
                Ok(Record::Eval(r)) if r.step <= last_step => records.eval.push(r),
                _ => {}
            },
        }
    }
    Ok(records)
}

/// The non-blank lines of a file's bytes, with their numbers (from 1).
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
}

/// Sets a damaged metrics.jsonl's bad lines aside: the file keeps its good lines,
/// the original goes to `metrics.jsonl.damaged`. Returns the warning for the user.
fn set_aside_damaged(path: &Path, damaged: &[usize]) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut good = Vec::with_capacity(bytes.len());
    let whole = |l: &&[u8]| serde_json::from_slice::<serde_json::Value>(l).is_ok();
    for (_, line) in lines(&bytes).filter(|(_, l)| whole(l)) {
        good.extend_from_slice(line);
        good.push(b'\n');
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(".damaged");
    let aside = std::path::PathBuf::from(aside);
    std::fs::copy(path, &aside)
        .with_context(|| format!("cannot copy {} to {}", path.display(), aside.display()))?;
    crate::checkpoint::atomic::replace_file(path, &good)?;
    Ok(format!(
        "warning: {}: {} damaged line(s) (first: line {}) set aside; the original is kept as {}",
        path.display(),
        damaged.len(),
        damaged[0],
        aside.display()
    ))
}

/// Sets aside the lines of metrics.jsonl after `step` (a branch of the run that
/// will not go on): the original is copied to `aside`, and the file keeps every
/// line but those whose step is past `step`. Returns how many lines went.
pub fn set_aside_after(path: &Path, step: usize, aside: &Path) -> Result<usize> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    #[derive(Deserialize)]
    struct Step {
        step: usize,
    }
    let later = |l: &&[u8]| serde_json::from_slice::<Step>(l).is_ok_and(|r| r.step > step);
    let mut kept = Vec::with_capacity(bytes.len());
    let mut moved = 0;
    for (_, line) in lines(&bytes) {
        match later(&line) {
            true => moved += 1,
            false => {
                kept.extend_from_slice(line);
                kept.push(b'\n');
            }
        }
    }
    if moved > 0 {
        std::fs::copy(path, aside)
            .with_context(|| format!("cannot copy {} to {}", path.display(), aside.display()))?;
        crate::checkpoint::atomic::replace_file(path, &kept)?;
    }
    Ok(moved)
}

pub struct Metrics {
    file: BufWriter<File>,
    pub train: Vec<TrainRecord>,
    pub eval: Vec<EvalRecord>,
}

impl Metrics {
    /// Opens metrics.jsonl for appending. When resuming (first_step > 0) the
    /// records up to first_step are read back, so the loss plot shows the whole run;
    /// damaged lines are set aside with a warning to `observer`, since a log must
    /// never block resuming a valid checkpoint.
    pub fn create(path: &Path, first_step: usize, observer: &mut dyn Observer) -> Result<Metrics> {
        let Records {
            train,
            eval,
            damaged,
        } = if first_step > 0 && path.exists() {
            read_records(path, first_step)?
        } else {
            Records::default()
        };
        if !damaged.is_empty() {
            observer.note(&set_aside_damaged(path, &damaged)?);
        }
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
