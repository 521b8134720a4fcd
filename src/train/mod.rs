//! The training loop: micro-batches with gradient accumulation, global-norm
//! clipping, AdamW with warm-up + cosine schedule, periodic validation, metrics and
//! a loss plot in the run directory; checkpoints, exact resume, a stop on SIGINT or
//! SIGTERM, and a guard against non-finite steps. What the user sees goes to a
//! [`TrainObserver`]; the loop prints nothing.
//!
//! Data parallel (ZeRO-1): a trainer is one rank of a group ([`Collective`]). Each
//! rank reads its slice of the global batch (batch_size x grad_accum x world) and
//! accumulates gradients locally, each micro-batch's scaled by 1/(grad_accum x
//! world); once per step the gradient is reduce-scattered (summed, so each rank's
//! shard holds the global mean), the global norm is the square root of the ranks'
//! partial sums of squares, each rank runs AdamW on its shard, and the parameters
//! are all-gathered. Rank 0 alone writes metrics, plots and checkpoints, which hold
//! whole tensors (the moments gathered), so any world size resumes them. A group of
//! one runs exactly the single-process arithmetic.

pub mod divergence;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod signals;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::backend::{self, Backend, DeviceChoice, Target};
use crate::checkpoint::{self, Checkpoint, TrainingSnapshot, compat};
use crate::config::Config;
use crate::data::{self, Batch, DataSpec, Dataset};
use crate::dist::{self, Collective, Place, Solo};
use crate::memory;
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
    /// A rank was asked to stop (SIGINT or SIGTERM) before this step's exchange:
    /// every rank of the group stops after it.
    pub stop: bool,
}

/// A model, its optimizer and its data, stepping together.
pub struct Trainer<B: Backend> {
    pub config: Config,
    pub model: Gpt<B>,
    pub optimizer: Optimizer,
    pub data: Dataset,
    /// Steps completed.
    pub step: usize,
    /// The group this trainer is a rank of.
    pub dist: Box<dyn Collective>,
    /// Each rank's range of the flat parameter vector (`dist::shards`).
    pub shards: Vec<Range<usize>>,
}

impl<B: Backend> Trainer<B> {
    /// A freshly initialised model on `backend`, checked against the data's vocab
    /// and, before anything is allocated, against the memory available: the only
    /// rank of its group.
    pub fn new(config: &Config, backend: B, data: Dataset) -> Result<Trainer<B>> {
        Trainer::in_group(config, backend, data, Box::new(Solo))
    }

    /// A freshly initialised model on `backend` as a rank of `dist`'s group, `data`
    /// loaded for that rank (`DataSpec { rank, world, .. }`), refused before anything
    /// is allocated if the step, with what the group holds beside it in the same
    /// memory, cannot fit ([`memory::Held::rank_of`]). Every rank initialises from
    /// the same seed, so all start with the same parameters.
    pub fn in_group(
        config: &Config,
        backend: B,
        data: Dataset,
        dist: Box<dyn Collective>,
    ) -> Result<Trainer<B>> {
        compat::check_data(&data, &config.model, None)?;
        let place = dist.place();
        memory::ensure_step_fits(config, config.train.batch_size, place.world, &backend)?;
        let model = Gpt::new(backend, &config.model);
        model.init(config.train.seed);
        let shards = dist::shards(model.num_params(), place.world);
        let optimizer = Optimizer::new(&model, shards[place.rank].clone());
        Ok(Trainer {
            config: config.clone(),
            model,
            optimizer,
            data,
            step: 0,
            dist,
            shards,
        })
    }

    /// One optimizer step: grad_accum micro-batches on each rank, the gradient
    /// reduce-scattered, clip by the global norm, AdamW on this rank's shard, the
    /// parameters all-gathered. A step whose loss or gradient norm is not finite
    /// still consumes its data but changes no parameter or moment. An error is a
    /// failed collective (a peer rank failed) or a shard that can no longer be read.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let t = &self.config.train;
        let world = self.dist.place().world;
        let (b, seq, accum) = (t.batch_size, t.seq_len, t.grad_accum);
        // Each micro-batch's share of the global batch's mean.
        let share = 1.0 / (accum * world) as f32;
        self.model.zero_grads();
        let mut loss = 0.0;
        for _ in 0..accum {
            let Batch { inputs, targets } = self.data.train.next_batch()?;
            loss += self
                .model
                .loss_and_head_grad(&inputs, &targets, b, seq, share);
            self.model.backward();
        }
        let be: &dyn Backend = &self.model.backend;
        self.dist
            .reduce_scatter_sum(be, self.model.grads, &self.shards)?;
        let own = &self.optimizer.shard;
        let sum_squares = if own.is_empty() {
            0.0
        } else {
            be.sum_squares(self.model.grads.slice(own.start, own.len()))
        };
        let stop = signals::stop_requested();
        let mut global = [loss / accum as f64, sum_squares, f64::from(u8::from(stop))];
        self.dist.all_reduce_host(&mut global)?;
        let loss = global[0] / world as f64;
        let grad_norm = global[1].sqrt();
        let lr = schedule::learning_rate(t, self.step);
        let skipped = !(loss.is_finite() && grad_norm.is_finite());
        if !skipped {
            self.optimizer
                .update(&self.model, t, lr, clip_scale(grad_norm, t.grad_clip));
            self.dist.all_gather(be, self.model.params, &self.shards)?;
        }
        self.step += 1;
        Ok(StepStats {
            loss,
            grad_norm,
            lr,
            tokens: b * seq * accum * world,
            skipped,
            stop: global[2] > 0.0,
        })
    }

    /// The state a checkpoint holds, read back to the host: whole tensors, the
    /// moments gathered from every rank's shard (a collective: every rank calls it).
    pub fn snapshot(&self) -> Result<TrainingSnapshot<'_>> {
        Ok(TrainingSnapshot {
            config: &self.config,
            step: self.step,
            adam_step: self.optimizer.step,
            params: self.model.read_params(),
            moments: self.gathered_moments()?,
            loader: self.data.train.position(),
            tokenizer: self.data.tokenizer.as_ref(),
            data: self.data.identity.as_ref(),
        })
    }

    /// Both moments of every parameter (m then v), from every rank's shard.
    fn gathered_moments(&self) -> Result<Vec<f32>> {
        let be: &dyn Backend = &self.model.backend;
        let opt = &self.optimizer;
        if self.shards.len() == 1 {
            return Ok([be.read(opt.m), be.read(opt.v)].concat());
        }
        let total = self.model.num_params();
        let mut out = Vec::with_capacity(2 * total);
        for moment in [opt.m, opt.v] {
            let full = be.alloc(total);
            be.copy(full.slice(opt.shard.start, opt.shard.len()), moment);
            let gathered = self.dist.all_gather(be, full, &self.shards);
            out.extend(be.read(full));
            be.free(full);
            gathered?;
        }
        Ok(out)
    }

    /// Puts a trainer built with the checkpoint's model config where the checkpoint
    /// left off: parameters and moments (as read by [`Checkpoint::read_params`] and
    /// [`Checkpoint::read_moments`], before a device is opened), AdamW's count, step,
    /// loader position.
    pub fn restore(&mut self, ckpt: &Checkpoint, params: &[f32], moments: &[f32]) -> Result<()> {
        let total = self.model.num_params();
        self.model.write_params(params);
        let be = &self.model.backend;
        let shard = self.optimizer.shard.clone();
        be.write(self.optimizer.m, &moments[shard.clone()]);
        be.write(
            self.optimizer.v,
            &moments[total + shard.start..total + shard.end],
        );
        self.optimizer.step = ckpt.state.adam_step;
        self.step = ckpt.state.step;
        self.data
            .train
            .seek(ckpt.state.loader)
            .context("cannot resume: the data differs from the checkpoint's")
    }

    /// Mean validation loss over up to `eval_steps` fixed batches.
    pub fn evaluate(&mut self) -> Result<f64> {
        let t = &self.config.train;
        let (b, seq) = (t.batch_size, t.seq_len);
        let batches = self.data.val.sequential_batches(t.eval_steps.max(1))?;
        let total: f64 = batches
            .iter()
            .map(|bt| self.model.loss(&bt.inputs, &bt.targets, b, seq))
            .sum();
        Ok(total / batches.len() as f64)
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

/// What a training process is asked to do.
#[derive(Clone, Copy, Debug)]
pub enum Job<'a> {
    /// A new run into `out`: from scratch, or (fine-tuning: step 0, a fresh
    /// optimizer) from the parameters of checkpoint `init`, whose model config must
    /// be the config's and whose tokenizer must have tokenized the data.
    New {
        out: &'a Path,
        init: Option<&'a Path>,
    },
    /// Continue the run in `run` from its latest checkpoint, or from the kept
    /// checkpoint of step `from`, under the config, which may differ from the
    /// checkpoint's only in training keys that steer the loop (see
    /// [`compat::check_resume`]); the differences are reported. Resuming from an
    /// earlier step sets the later checkpoints and metrics.jsonl lines aside (see
    /// [`checkpoint::abandon`]), once every check has passed.
    Resume { run: &'a Path, from: Option<usize> },
}

/// Trains `config` from scratch on the device `device` picks, writing into `out`.
pub fn run(
    config: &Config,
    out: &Path,
    device: DeviceChoice,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    run_job(Job::New { out, init: None }, config, device, observer)
}

/// Trains `config` as a new run from the parameters of checkpoint `init` (see
/// [`Job::New`]).
pub fn fine_tune(
    init: &Path,
    config: &Config,
    out: &Path,
    device: DeviceChoice,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    let job = Job::New {
        out,
        init: Some(init),
    };
    run_job(job, config, device, observer)
}

/// Continues run `run` from its latest checkpoint (see [`Job::Resume`]).
pub fn resume(
    run: &Path,
    config: &Config,
    device: DeviceChoice,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    run_job(Job::Resume { run, from: None }, config, device, observer)
}

/// `job` as the only rank of its group, on the device `device` picks.
pub fn run_job(
    job: Job,
    config: &Config,
    device: DeviceChoice,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    let open = || open_backend(device, config);
    execute(job, config, Box::new(Solo), open, observer)
}

/// `job` as `ranks` thread-ranks of this process ([`dist::threads`]), each with its
/// own CPU backend (they share rayon's one pool, so the cores are not
/// oversubscribed). Rank 0 runs on this thread and reports to `observer`; the
/// result is rank 0's summary or the first rank's failure.
pub fn run_threads(
    job: Job,
    config: &Config,
    ranks: usize,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    // The ranks share this host: their plans are checked together, once, before
    // any rank starts (each rank's own check in `execute` then passes).
    let held = memory::Held::rank_of(ranks, Target::Cpu);
    let host = memory::host_available()?;
    memory::ensure_held_fits(
        config,
        config.train.batch_size,
        &held,
        Target::Cpu,
        host.as_ref(),
    )?;
    let open = || open_backend(DeviceChoice::Cpu, config);
    dist::threads::run(
        ranks,
        |rank| execute(job, config, Box::new(rank), open, observer),
        |rank| execute(job, config, Box::new(rank), open, &mut ()).map(|_| ()),
    )
}

/// `job` as one rank of a group of processes (one per GPU): `backend` is this
/// rank's device, described by `device_line`, and `dist` its collective (e.g.
/// `dist::nccl::Nccl`). Rank 0 reports to `observer` and writes the run's files.
pub fn run_rank(
    job: Job,
    config: &Config,
    backend: Box<dyn Backend>,
    device_line: String,
    dist: Box<dyn Collective>,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    execute(job, config, dist, || Ok((backend, device_line)), observer)
}

/// Runs `job` as the rank `dist` places: every rank loads its slice of the data and
/// the checkpoint it starts from; rank 0 alone checks, locks and writes the run
/// directory. `open` opens the backend; a step, as one rank of the group, is
/// checked against its memory ([`memory::ensure_step_fits`]) before the data is
/// read or the run directory written (a step that cannot fit is refused first).
fn execute(
    job: Job,
    config: &Config,
    dist: Box<dyn Collective>,
    open: impl FnOnce() -> Result<(Box<dyn Backend>, String)>,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    let config = &with_canonical_data_dir(config);
    let place = dist.place();
    let spec = DataSpec {
        rank: place.rank,
        world: place.world,
        ..DataSpec::of(config)
    };
    match job {
        Job::New { out, init } => {
            let init = init.map(Checkpoint::open).transpose()?;
            if let Some(ckpt) = &init {
                compat::check_init(&ckpt.state.config, config)?;
            }
            let _lock = match place.is_first() {
                true => Some(claim_new_run(config, out, init.as_ref(), observer)?),
                false => None,
            };
            let (backend, device_line) = open_fitting(open, config, place)?;
            let data = data::load(&spec)?;
            let params = match &init {
                Some(ckpt) => {
                    compat::check_data(&data, &config.model, Some(&ckpt.state))
                        .context("cannot start from the checkpoint")?;
                    Some(ckpt.read_params()?)
                }
                None => None,
            };
            if place.is_first() {
                std::fs::create_dir_all(out)
                    .with_context(|| format!("cannot create run directory {}", out.display()))?;
                write_config(config, out)?;
            }
            let tr = Trainer::in_group(config, backend, data, dist)?;
            if let Some(p) = &params {
                tr.model.write_params(p);
            }
            run_trainer(tr, out, &device_line, None, observer)
        }
        Job::Resume { run, from } => {
            // A missing directory is not created (open_run names the problem).
            let _lock = match place.is_first() && run.is_dir() {
                true => Some(checkpoint::lock::acquire(run)?),
                false => None,
            };
            let ckpt = match from {
                Some(step) => Checkpoint::open_step(run, step)?,
                None => Checkpoint::open_run(run)?,
            };
            let changes = compat::check_resume(&ckpt.state.config, config)?;
            let (backend, device_line) = open_fitting(open, config, place)?;
            let data = data::load(&spec)?;
            let data_notes = compat::check_same_data(&ckpt.state, config, &data)?;
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
            for note in &data_notes {
                observer.note(note);
            }
            if ckpt.state.step >= config.train.max_steps {
                observer.note(&format!(
                    "note: the run is at step {} of train.max_steps = {}: nothing to train (raise it with --steps)",
                    ckpt.state.step, config.train.max_steps
                ));
            }
            if place.is_first() {
                if let Some(step) = from {
                    set_aside_branch(run, step, observer)?;
                }
                write_config(config, run)?;
            }
            let mut tr = Trainer::in_group(config, backend, data, dist)?;
            tr.restore(&ckpt, &params, &moments)?;
            run_trainer(tr, run, &device_line, Some(ckpt.dir.clone()), observer)
        }
    }
}

/// Sets aside what `run` holds after `step`, the branch that resuming at `step`
/// abandons: its checkpoints and metrics.jsonl lines, kept together in one
/// abandoned directory, said on the observer.
fn set_aside_branch(run: &Path, step: usize, observer: &mut dyn TrainObserver) -> Result<()> {
    let Some(abandoned) = checkpoint::abandon::after(run, step)? else {
        return Ok(());
    };
    let log = run.join("metrics.jsonl");
    let lines = metrics::set_aside_after(&log, step, &abandoned.dir.join("metrics.jsonl"))?;
    let steps: Vec<String> = abandoned.steps.iter().map(usize::to_string).collect();
    observer.note(&format!(
        "resuming at step {step}: the later checkpoints ({} {}) and {lines} metrics.jsonl line(s) after step {step} are kept aside in {}",
        if steps.len() == 1 { "step" } else { "steps" },
        steps.join(", "),
        abandoned.dir.display()
    ));
    Ok(())
}

/// Takes `out` for a new run: its lock, after checking that it holds no
/// checkpoints (a first checkpoint cut short is cleared) and is none of the run's
/// inputs.
fn claim_new_run(
    config: &Config,
    out: &Path,
    init: Option<&Checkpoint>,
    observer: &mut dyn TrainObserver,
) -> Result<checkpoint::lock::RunLock> {
    let lock = checkpoint::lock::acquire(out)?;
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
    Ok(lock)
}

/// `config` with `data.dir` as a canonical absolute path, so that the run's config
/// and checkpoints name the data however it was spelled and wherever the run is
/// resumed from. A directory that does not resolve stays as given (loading it
/// names the problem).
fn with_canonical_data_dir(config: &Config) -> Config {
    let mut config = config.clone();
    if !config.data.dir.is_empty()
        && let Ok(path) = Path::new(&config.data.dir).canonicalize()
        && let Some(path) = path.to_str()
    {
        config.data.dir = path.to_string();
    }
    config
}

/// The backend `device` and the config's precision and head size ask for.
fn open_backend(device: DeviceChoice, config: &Config) -> Result<(Box<dyn Backend>, String)> {
    backend::open(device, config.train.precision, config.model.head_size())
}

/// The backend `open` gives, once a training step of `config`, as the rank `place`
/// of its group, is known to fit in its memory (the check [`Trainer::in_group`]
/// makes again before allocating, here before the data is read).
fn open_fitting(
    open: impl FnOnce() -> Result<(Box<dyn Backend>, String)>,
    config: &Config,
    place: Place,
) -> Result<(Box<dyn Backend>, String)> {
    let (backend, line) = open()?;
    memory::ensure_step_fits(config, config.train.batch_size, place.world, &backend)?;
    Ok((backend, line))
}

/// The context of an error that stops training at `step`: the checkpoint it keeps.
fn stopped(step: usize, last_checkpoint: &Option<PathBuf>) -> String {
    match last_checkpoint {
        Some(c) => format!(
            "training stopped at step {step}; the last checkpoint, {}, is kept",
            c.display()
        ),
        None => format!("training stopped at step {step}, before any checkpoint"),
    }
}

fn write_config(config: &Config, out: &Path) -> Result<()> {
    let path = out.join(checkpoint::RUN_CONFIG_FILE);
    std::fs::write(&path, config.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The line that says how big a step is.
fn batch_line(t: &crate::config::TrainConfig, place: Place, out: &Path) -> String {
    let per_rank = format!(
        "{} x {} tokens x {} micro-batches",
        t.batch_size, t.seq_len, t.grad_accum
    );
    if place.world == 1 {
        return format!(
            "training {} steps of {per_rank} into {}",
            t.max_steps,
            out.display()
        );
    }
    let sequences = t.batch_size * t.grad_accum * place.world;
    format!(
        "training {} steps of {per_rank} x {} ranks: a global batch of {sequences} sequences ({} tokens) into {}",
        t.max_steps,
        place.world,
        sequences * t.seq_len,
        out.display()
    )
}

/// Trains until max_steps or a stop signal, with checkpoints into `out`.
/// `last_checkpoint` is the one resumed from, if any. Only rank 0 writes.
fn run_trainer<B: Backend>(
    mut tr: Trainer<B>,
    out: &Path,
    device_line: &str,
    mut last_checkpoint: Option<PathBuf>,
    observer: &mut dyn TrainObserver,
) -> Result<Summary> {
    let t = tr.config.train.clone();
    let m = tr.config.model.clone();
    let place = tr.dist.place();
    let first_step = tr.step;
    observer.start(first_step, t.max_steps, tr.model.backend.target());
    let mut metrics = match place.is_first() {
        true => Some(Metrics::create(
            &out.join("metrics.jsonl"),
            first_step,
            observer,
        )?),
        false => None,
    };
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
    observer.note(&batch_line(&t, place, out));

    let start = Instant::now();
    let mut window = (0.0, 0usize, 0usize, Instant::now()); // loss sum, steps, tokens, since
    let mut last_val = None;
    let mut guard = DivergenceGuard::new(t.max_bad_steps);
    let mut interrupted = false;
    while tr.step < t.max_steps {
        let s = tr
            .train_step()
            .with_context(|| stopped(tr.step + 1, &last_checkpoint))?;
        if s.skipped {
            if let Some(mx) = &mut metrics {
                mx.log_skipped(SkippedRecord {
                    step: tr.step,
                    train_loss: None,
                    grad_norm: s.grad_norm,
                    skipped: true,
                })?;
            }
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
            if let Some(mx) = &mut metrics {
                mx.log_train(record)?;
            }
            window = (0.0, 0, 0, Instant::now());
        }
        interrupted = s.stop;
        if interrupted {
            break;
        }
        let eval_now =
            (t.eval_every > 0 && tr.step.is_multiple_of(t.eval_every)) || tr.step == t.max_steps;
        // Every rank holds the same parameters: rank 0 evaluates for the group.
        if let (true, Some(mx)) = (eval_now, &mut metrics) {
            let val_loss = tr
                .evaluate()
                .with_context(|| stopped(tr.step, &last_checkpoint))?;
            let record = EvalRecord {
                step: tr.step,
                val_loss,
            };
            observer.evaluated(&record);
            mx.log_eval(record)?;
            last_val = Some(val_loss);
        }
        if t.checkpoint_every > 0 && tr.step.is_multiple_of(t.checkpoint_every) && guard.is_clear()
        {
            last_checkpoint = save(&tr, out)?.or(last_checkpoint);
        }
    }
    // The final (or interrupted) state, unless it follows non-finite steps: then the
    // last good checkpoint stays the newest.
    if guard.is_clear() {
        last_checkpoint = save(&tr, out)?.or(last_checkpoint);
    }
    observer.finish();
    if let Some(mx) = &metrics {
        let plot_path = out.join("loss.png");
        let title = format!(
            "{} head, {} layers x {} channels",
            m.head, m.n_layer, m.n_embd
        );
        let entropy = tr.data.unigram_entropy;
        plot::plot_losses(&plot_path, &title, &mx.train, &mx.eval, entropy)?;
    }
    guard.check_end(tr.step, last_checkpoint.as_deref())?;
    let elapsed_s = start.elapsed().as_secs_f64();
    let tokens =
        ((tr.step - first_step) * t.batch_size * t.seq_len * t.grad_accum * place.world) as f64;
    Ok(Summary {
        steps: tr.step,
        final_train_loss: metrics.and_then(|mx| mx.train.last().map(|r| r.train_loss)),
        final_val_loss: last_val,
        unigram_entropy: tr.data.unigram_entropy,
        tokens_per_s: tokens / elapsed_s,
        elapsed_s,
        run_dir: out.to_path_buf(),
        last_checkpoint,
        interrupted,
    })
}

/// A checkpoint of the group's state (every rank takes part in gathering it; rank
/// 0 writes it and returns its path).
fn save<B: Backend>(tr: &Trainer<B>, out: &Path) -> Result<Option<PathBuf>> {
    let snapshot = tr.snapshot()?;
    match tr.dist.place().is_first() {
        true => Ok(Some(checkpoint::save(out, &snapshot)?)),
        false => Ok(None),
    }
}
