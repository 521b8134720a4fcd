//! The training loop: micro-batches with gradient accumulation, global-norm
//! clipping, AdamW with warm-up + cosine schedule, periodic validation, metrics and
//! a loss plot in the run directory; checkpoints, exact resume, a stop on SIGINT or
//! SIGTERM, and a guard against non-finite steps. What the user sees goes to a
//! [`TrainObserver`]; the loop prints nothing.

pub mod divergence;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod signals;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::backend::{self, Backend, DeviceChoice, Target};
use crate::checkpoint::{self, Checkpoint, TrainingSnapshot, compat};
use crate::config::Config;
use crate::data::{self, Batch, DataSpec, Dataset};
use crate::model::Gpt;
use crate::observe::Observer;
use divergence::DivergenceGuard;
use metrics::{EvalRecord, Metrics, SkippedRecord, TrainRecord};
use optim::{Optimizer, clip_scale};

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
    /// The loss or the gradient norm was not finite, so no update was applied.
    pub skipped: bool,
}

/// A model, its optimizer and its data, stepping together.
pub struct Trainer<B: Backend> {
    pub config: Config,
    pub model: Gpt<B>,
    pub optimizer: Optimizer,
    pub data: Dataset,
    /// Steps completed.
    pub step: usize,
}

impl<B: Backend> Trainer<B> {
    /// A freshly initialised model on `backend`, checked against the data's vocab.
    pub fn new(config: &Config, backend: B, data: Dataset) -> Result<Trainer<B>> {
        compat::check_data(&data, &config.model, None)?;
        let model = Gpt::new(backend, &config.model);
        model.init(config.train.seed);
        let optimizer = Optimizer::new(&model);
        Ok(Trainer {
            config: config.clone(),
            model,
            optimizer,
            data,
            step: 0,
        })
    }

    /// One optimizer step: grad_accum micro-batches, clip, AdamW. A step whose loss
    /// or gradient norm is not finite still consumes its data but changes no
    /// parameter or moment.
    pub fn train_step(&mut self) -> StepStats {
        let t = &self.config.train;
        let (b, seq, accum) = (t.batch_size, t.seq_len, t.grad_accum);
        self.model.zero_grads();
        let mut loss = 0.0;
        for _ in 0..accum {
            let Batch { inputs, targets } = self.data.train.next_batch();
            loss += self
                .model
                .loss_and_head_grad(&inputs, &targets, b, seq, 1.0 / accum as f32);
            self.model.backward();
        }
        let loss = loss / accum as f64;
        let grad_norm = self.model.grad_norm();
        let lr = schedule::learning_rate(t, self.step);
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        if !skipped {
            self.optimizer
                .update(&self.model, t, lr, clip_scale(grad_norm, t.grad_clip));
        }
        self.step += 1;
        StepStats {
            loss,
            grad_norm,
            lr,
            tokens: b * seq * accum,
            skipped,
        }
    }

    /// The state a checkpoint holds, read back to the host.
    pub fn snapshot(&self) -> TrainingSnapshot<'_> {
        let be = &self.model.backend;
        TrainingSnapshot {
            config: &self.config,
            step: self.step,
            adam_step: self.optimizer.step,
            params: self.model.read_params(),
            moments: [be.read(self.optimizer.m), be.read(self.optimizer.v)].concat(),
            loader: self.data.train.position(),
            tokenizer: self.data.tokenizer.as_ref(),
        }
    }

    /// Puts a trainer built with the checkpoint's model config where the checkpoint
    /// left off: parameters and moments (as read by [`Checkpoint::read_params`] and
    /// [`Checkpoint::read_moments`], before a device is opened), AdamW's count, step,
    /// loader position.
    pub fn restore(&mut self, ckpt: &Checkpoint, params: &[f32], moments: &[f32]) -> Result<()> {
        let total = self.model.num_params();
        self.model.write_params(params);
        let be = &self.model.backend;
        be.write(self.optimizer.m, &moments[..total]);
        be.write(self.optimizer.v, &moments[total..]);
        self.optimizer.step = ckpt.state.adam_step;
        self.step = ckpt.state.step;
        self.data
            .train
            .seek(ckpt.state.loader)
            .context("cannot resume: the data differs from the checkpoint's")
    }

    /// Mean validation loss over up to `eval_steps` fixed batches.
    pub fn evaluate(&mut self) -> f64 {
        let t = &self.config.train;
        let (b, seq) = (t.batch_size, t.seq_len);
        let batches = self.data.val.sequential_batches(t.eval_steps.max(1));
        let total: f64 = batches
            .iter()
            .map(|bt| self.model.loss(&bt.inputs, &bt.targets, b, seq))
            .sum();
        total / batches.len() as f64
    }
}

/// What the training loop reports as it goes, beside the notes of [`Observer`]
/// (the run's description, resume notes, divergence warnings); the command line
/// draws a progress bar or prints log lines.
pub trait TrainObserver: Observer {
    /// Training runs from `first_step` to `max_steps` on `target`; called before
    /// any note of the run itself.
    fn start(&mut self, _first_step: usize, _max_steps: usize, _target: Target) {}
    /// A logged training step, as written to metrics.jsonl.
    fn logged(&mut self, _record: &TrainRecord) {}
    /// A validation loss, as written to metrics.jsonl.
    fn evaluated(&mut self, _record: &EvalRecord) {}
    /// The loop ended (the summary follows as the run's return value).
    fn finish(&mut self) {}
}

/// Ignores everything.
impl TrainObserver for () {}

/// What a finished (or interrupted) run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps: usize,
    /// The last logged training loss; None when no step was logged.
    pub final_train_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub unigram_entropy: f64,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    pub run_dir: PathBuf,
    /// The newest checkpoint the run has; None when none was written.
    pub last_checkpoint: Option<PathBuf>,
    /// A stop signal ended the run before max_steps.
    pub interrupted: bool,
}

/// Trains `config` from scratch on the device `device` picks, writing into `out`.
pub fn run(
    config: &Config,
    out: &Path,
    device: DeviceChoice,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    start(config, out, device, None, observer)
}

/// Trains `config` as a new run (step 0, fresh optimizer) from the parameters of
/// checkpoint `init`: fine-tuning, e.g. of an imported model. The model config
/// must be the checkpoint's, and the data tokenized by its tokenizer.
pub fn fine_tune(
    init: &Path,
    config: &Config,
    out: &Path,
    device: DeviceChoice,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    let ckpt = Checkpoint::open(init)?;
    compat::check_init(&ckpt.state.config, config)?;
    start(config, out, device, Some(&ckpt), observer)
}

fn start(
    config: &Config,
    out: &Path,
    device: DeviceChoice,
    init: Option<&Checkpoint>,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    let _lock = checkpoint::lock::acquire(out)?;
    let ckpts = checkpoint::checkpoints_dir(out);
    // A run killed while writing its first checkpoint has checkpoints/ but nothing
    // committed in it: nothing to resume, so it is started over.
    if ckpts.exists() && checkpoint::list(out)?.is_empty() {
        std::fs::remove_dir_all(&ckpts)
            .with_context(|| format!("cannot remove {}", ckpts.display()))?;
        observer.note(&format!(
            "note: {} holds no committed checkpoint (its first write was cut short); starting it over",
            out.display()
        ));
    }
    if ckpts.exists() {
        bail!(
            "{} already holds checkpoints: continue it with `hgpt train --resume {}`, or pick another --out",
            out.display(),
            out.display()
        );
    }
    let data_dir = Path::new(&config.data.dir);
    let inputs: Vec<&Path> = std::iter::once(data_dir)
        .filter(|d| !d.as_os_str().is_empty())
        .chain(init.map(|c| c.dir.as_path()))
        .collect();
    checkpoint::guard::check_output("--out", out, &inputs)?;
    let data = data::load(&DataSpec::of(config))?;
    let params = match init {
        Some(ckpt) => {
            compat::check_data(&data, &config.model, Some(&ckpt.state))
                .context("cannot start from the checkpoint")?;
            Some(ckpt.read_params()?)
        }
        None => None,
    };
    let (backend, device_line) = open_backend(device, config)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    write_config(config, out)?;
    let tr = Trainer::new(config, backend, data)?;
    if let Some(p) = &params {
        tr.model.write_params(p);
    }
    run_trainer(tr, out, &device_line, None, observer)
}

/// The backend `device` and the config's precision and head size ask for.
fn open_backend(device: DeviceChoice, config: &Config) -> Result<(Box<dyn Backend>, String)> {
    backend::open(device, config.train.precision, config.model.head_size())
}

/// Continues run `run` from its latest checkpoint under `config`, which may differ
/// from the checkpoint's only in training keys that steer the loop (see
/// [`compat::check_resume`]); the differences are reported.
pub fn resume(
    run: &Path,
    config: &Config,
    device: DeviceChoice,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    // A missing directory is not created (open_run names the problem).
    let _lock = if run.is_dir() {
        Some(checkpoint::lock::acquire(run)?)
    } else {
        None
    };
    let ckpt = Checkpoint::open_run(run)?;
    let changes = compat::check_resume(&ckpt.state.config, config)?;
    let data = data::load(&DataSpec::of(config))?;
    compat::check_data(&data, &config.model, Some(&ckpt.state)).context("cannot resume")?;
    let (params, moments) = (ckpt.read_params()?, ckpt.read_moments()?);
    observer.note(&format!(
        "resuming {} at step {}",
        ckpt.dir.display(),
        ckpt.state.step
    ));
    for change in &changes {
        observer.note(&format!("changed on resume: {change}"));
    }
    if ckpt.state.step >= config.train.max_steps {
        observer.note(&format!(
            "note: the run is at step {} of train.max_steps = {}: nothing to train (raise it with --steps)",
            ckpt.state.step, config.train.max_steps
        ));
    }
    write_config(config, run)?;
    let (backend, device_line) = open_backend(device, config)?;
    let mut tr = Trainer::new(config, backend, data)?;
    tr.restore(&ckpt, &params, &moments)?;
    run_trainer(tr, run, &device_line, Some(ckpt.dir.clone()), observer)
}

fn write_config(config: &Config, out: &Path) -> Result<()> {
    let path = out.join(checkpoint::RUN_CONFIG_FILE);
    std::fs::write(&path, config.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Trains until max_steps or a stop signal, with checkpoints into `out`.
/// `last_checkpoint` is the one resumed from, if any.
fn run_trainer<B: Backend>(
    mut tr: Trainer<B>,
    out: &Path,
    device_line: &str,
    mut last_checkpoint: Option<PathBuf>,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    let t = tr.config.train.clone();
    let m = tr.config.model.clone();
    let first_step = tr.step;
    let mut metrics = Metrics::create(&out.join("metrics.jsonl"), first_step)?;
    observer.start(first_step, t.max_steps, tr.model.backend.target());
    observer.note(device_line);
    observer.note(&format!(
        "hgpt: {} layers, {} heads, {} channels, {} head, {:.2}M parameters on {}",
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.head,
        tr.model.num_params() as f64 / 1e6,
        tr.model.backend.describe()
    ));
    observer.note(&format!("data: {}", tr.data.description));
    observer.note(&format!(
        "unigram entropy of the training data: {:.4} nats/token ({:.3} bits); ln(vocab) = {:.4}",
        tr.data.unigram_entropy,
        tr.data.unigram_entropy / std::f64::consts::LN_2,
        (m.vocab_size as f64).ln()
    ));
    observer.note(&format!(
        "training {} steps of {} x {} tokens x {} micro-batches into {}",
        t.max_steps,
        t.batch_size,
        t.seq_len,
        t.grad_accum,
        out.display()
    ));

    let start = Instant::now();
    let mut window = (0.0, 0usize, 0usize, Instant::now()); // loss sum, steps, tokens, since
    let mut last_val = None;
    let mut guard = DivergenceGuard::new(t.max_bad_steps);
    let mut interrupted = false;
    while tr.step < t.max_steps {
        let s = tr.train_step();
        if s.skipped {
            metrics.log_skipped(SkippedRecord {
                step: tr.step,
                train_loss: None,
                grad_norm: s.grad_norm,
                skipped: true,
            })?;
            let warning = guard.bad_step(tr.step, last_checkpoint.as_deref())?;
            observer.note(&warning);
        } else {
            guard.good_step();
            window = (
                window.0 + s.loss,
                window.1 + 1,
                window.2 + s.tokens,
                window.3,
            );
        }
        if (tr.step.is_multiple_of(t.log_every) || tr.step == t.max_steps) && window.1 > 0 {
            let record = TrainRecord {
                step: tr.step,
                train_loss: window.0 / window.1 as f64,
                lr: s.lr,
                grad_norm: s.grad_norm,
                tokens_per_s: window.2 as f64 / window.3.elapsed().as_secs_f64(),
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            observer.logged(&record);
            metrics.log_train(record)?;
            window = (0.0, 0, 0, Instant::now());
        }
        interrupted = signals::stop_requested();
        if interrupted {
            break;
        }
        if (t.eval_every > 0 && tr.step.is_multiple_of(t.eval_every)) || tr.step == t.max_steps {
            let val_loss = tr.evaluate();
            let record = EvalRecord {
                step: tr.step,
                val_loss,
            };
            observer.evaluated(&record);
            metrics.log_eval(record)?;
            last_val = Some(val_loss);
        }
        if t.checkpoint_every > 0 && tr.step.is_multiple_of(t.checkpoint_every) && guard.is_clear()
        {
            last_checkpoint = Some(checkpoint::save(out, &tr.snapshot())?);
        }
    }
    // The final (or interrupted) state, unless it follows non-finite steps: then the
    // last good checkpoint stays the newest.
    if guard.is_clear() {
        last_checkpoint = Some(checkpoint::save(out, &tr.snapshot())?);
    }
    observer.finish();
    let plot_path = out.join("loss.png");
    let title = format!(
        "{} head, {} layers x {} channels",
        m.head, m.n_layer, m.n_embd
    );
    let entropy = tr.data.unigram_entropy;
    plot::plot_losses(&plot_path, &title, &metrics.train, &metrics.eval, entropy)?;
    guard.check_end(tr.step, last_checkpoint.as_deref())?;
    let elapsed_s = start.elapsed().as_secs_f64();
    let tokens = ((tr.step - first_step) * t.batch_size * t.seq_len * t.grad_accum) as f64;
    Ok(Summary {
        steps: tr.step,
        final_train_loss: metrics.train.last().map(|r| r.train_loss),
        final_val_loss: last_val,
        unigram_entropy: tr.data.unigram_entropy,
        tokens_per_s: tokens / elapsed_s,
        elapsed_s,
        run_dir: out.to_path_buf(),
        last_checkpoint,
        interrupted,
    })
}
