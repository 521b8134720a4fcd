//! `hgpt llc`: the command-line forms of the estimator, with their progress bars
//! and printed results.
//!
//! - `hgpt llc --checkpoint PATH` and `hgpt llc --run RUN`: the GPT of a run;
//! - `hgpt llc dln --widths ... --rank R`: a deep linear network beside theory;
//! - `hgpt llc layernorm`: the LayerNorm example with its loss drop.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use hgpt::backend::{self, Backend, DeviceChoice, Target};
use hgpt::checkpoint::lock::{self, RunLock};
use hgpt::checkpoint::{self, Checkpoint};
use hgpt::config::Config;
use hgpt::llc::LlcEstimate;
use hgpt::llc::dln::DeepLinearNetwork;
use hgpt::llc::host_target::HostTarget;
use hgpt::llc::layernorm_mlp::{self, LayerNormMlp, Schedule};
use hgpt::llc::over_training::{LlcLog, StepLlc};
use hgpt::llc::sampler::{NBeta, SgldSettings};
use hgpt::llc::{aoyagi, estimate, gpt, write_outputs};
use hgpt::memory::Held;
use hgpt::model::Gpt;

use super::{DeviceArgs, whole};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LlcArgs {
    #[command(subcommand)]
    model: Option<LlcModel>,
    /// A checkpoint directory (RUN/checkpoints/step_NNNNNNNN)
    #[arg(long, value_name = "PATH", conflicts_with = "run")]
    checkpoint: Option<PathBuf>,
    /// A run directory: the LLC of each of its checkpoints, into RUN/llc.jsonl
    #[arg(long, value_name = "RUN")]
    run: Option<PathBuf>,
    /// Prepared data directory to sample batches from (default: the run's own)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Output directory (default: the checkpoint's for --checkpoint, the run's for --run)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    sgld: SgldArgs,
}

#[derive(Subcommand)]
enum LlcModel {
    /// A deep linear network at a random true parameter, beside Aoyagi's exact value
    Dln(DlnArgs),
    /// Linear(4->64) -> LayerNorm -> Linear(64->4) trained by SGD through a sharp
    /// loss drop, with the LLC every few steps
    Layernorm(LayerNormArgs),
}

#[derive(Args)]
struct DlnArgs {
    /// Layer widths H0 (input), H1, ..., HL (output)
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "H0,H1,...,HL"
    )]
    widths: Vec<usize>,
    /// Rank of the true product matrix
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = whole::<usize>)]
    rank: usize,
    /// Training examples drawn from the true network
    #[arg(long, default_value_t = 10_000, value_name = "N", allow_negative_numbers = true, value_parser = whole::<usize>)]
    samples: usize,
    /// Directory for llc.json and llc.png (default: none written)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    sgld: SgldArgs,
}

#[derive(Args)]
struct LayerNormArgs {
    /// SGD steps
    #[arg(long, default_value_t = Schedule::DEFAULT.steps, allow_negative_numbers = true, value_parser = whole::<usize>)]
    steps: usize,
    /// Steps between LLC estimates
    #[arg(long, default_value_t = Schedule::DEFAULT.every, allow_negative_numbers = true, value_parser = whole::<usize>)]
    every: usize,
    /// SGD learning rate
    #[arg(long, default_value_t = Schedule::DEFAULT.lr, allow_negative_numbers = true)]
    lr: f32,
    /// Directory for llc.jsonl and llc_over_training.png (default: runs/llc-layernorm-<time>)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    sgld: SgldArgs,
}

/// Sampler settings shared by every `hgpt llc` form.
#[derive(Args)]
struct SgldArgs {
    /// Independent SGLD chains [default: 10; for `dln` 10, then more (up to 100)
    /// until the standard error is at most 3% of the estimate]
    #[arg(long, allow_negative_numbers = true, value_parser = whole::<usize>)]
    chains: Option<usize>,
    /// Recorded draws per chain
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = whole::<usize>)]
    draws: usize,
    /// Steps per chain before recording [default: --draws, 3 x --draws for `dln`]
    #[arg(long, allow_negative_numbers = true, value_parser = whole::<usize>)]
    burnin: Option<usize>,
    /// SGLD step size, fixed [default: tuned during each chain's burn-in to eps x
    /// curvature = 0.15, starting from 1e-4; 1e-3 for `layernorm`; 9e-4/sqrt(widest
    /// layer) for `dln`]
    #[arg(long, allow_negative_numbers = true)]
    epsilon: Option<f64>,
    /// Pull back to the weights under study [default: 1000; 100 for `layernorm`; 2 for `dln`]
    #[arg(long, allow_negative_numbers = true)]
    gamma: Option<f64>,
    /// Inverse temperature times sample size, or "auto" for B / ln B
    #[arg(
        long,
        default_value = "auto",
        allow_negative_numbers = true,
        value_name = "NB|auto"
    )]
    nbeta: String,
    /// Minibatch size B [default: the run's train.batch_size; 1024 for `dln`; 64 for `layernorm`]
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = whole::<usize>)]
    batch_size: Option<usize>,
    /// Seed of the SGLD noise (and of `dln`'s and `layernorm`'s data; a GPT's
    /// batches follow its run's loader)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = whole::<u64>)]
    seed: u64,
    /// Print JSON instead of a summary
    #[arg(long)]
    json: bool,
}

/// A model family's defaults for what was not given on the command line.
struct Defaults {
    /// The step each chain starts from (then tuned, see sampler::StepTuner).
    epsilon: f64,
    gamma: f64,
    batch_size: usize,
    /// Burn-in steps per recorded draw.
    burnin_per_draw: usize,
    /// Without --chains: up to this many times the default chains, until precise
    /// (sampler::RELATIVE_STANDARD_ERROR).
    max_chains_factor: usize,
}

/// Chains when --chains is not given.
const DEFAULT_CHAINS: usize = 10;

impl Defaults {
    /// Tuned on configs/tiny.toml: with nbeta = B / ln B (small: B counts
    /// sequences) the pull back to w* is what keeps chains local; at gamma 1000 they
    /// settle within 20 steps, at 300 only after 60 and further out (BENCHMARKS.md).
    fn gpt(batch_size: usize) -> Defaults {
        Defaults {
            epsilon: 1e-4,
            gamma: 1000.0,
            batch_size,
            burnin_per_draw: 1,
            max_chains_factor: 1,
        }
    }

    /// Chains on a deep linear network start at its most singular point, where the
    /// posterior is stiffest in the widest layers (about sqrt(width)), and take
    /// longer to spread: a starting step shrinking with width (so the first window
    /// of tuning stays in the basin), and a longer burn-in. Small networks at rank 0
    /// have chains that disagree by 15-30% each (slow, heavy-tailed spreading from
    /// w* = 0): more chains make the comparison with theory show the sampler's bias,
    /// not its noise.
    fn dln(widths: &[usize]) -> Defaults {
        let widest = widths.iter().copied().max().unwrap_or(1).max(1);
        Defaults {
            epsilon: 9e-4 / (widest as f64).sqrt(),
            gamma: 2.0,
            batch_size: 1024,
            burnin_per_draw: 3,
            max_chains_factor: 10,
        }
    }

    const LAYERNORM: Defaults = Defaults {
        epsilon: 1e-3,
        gamma: 100.0,
        batch_size: 64,
        burnin_per_draw: 1,
        max_chains_factor: 1,
    };
}

impl SgldArgs {
    /// The batch size and settings, `defaults` filling what was not given.
    fn settings(&self, defaults: &Defaults) -> Result<(usize, SgldSettings)> {
        let batch_size = self.batch_size.unwrap_or(defaults.batch_size);
        if batch_size == 0 {
            bail!("--batch-size must be at least 1, got 0");
        }
        let chains = self.chains.unwrap_or(DEFAULT_CHAINS);
        let max_chains = match self.chains {
            Some(c) => c,
            None => DEFAULT_CHAINS * defaults.max_chains_factor,
        };
        let settings = SgldSettings {
            chains,
            max_chains,
            draws: self.draws,
            burnin: self.burnin.unwrap_or(self.draws * defaults.burnin_per_draw),
            epsilon: self.epsilon.unwrap_or(defaults.epsilon),
            tune_epsilon: self.epsilon.is_none(),
            gamma: self.gamma.unwrap_or(defaults.gamma),
            nbeta: NBeta::parse(&self.nbeta)?.resolve(batch_size),
            seed: self.seed,
        };
        settings.validate()?;
        Ok((batch_size, settings))
    }
}

pub fn run(args: &LlcArgs) -> Result<()> {
    match (&args.model, &args.checkpoint, &args.run) {
        (Some(LlcModel::Dln(dln)), _, _) => run_dln(dln),
        (Some(LlcModel::Layernorm(ln)), _, _) => run_layernorm(ln),
        (None, Some(path), _) => run_checkpoint(args, path),
        (None, None, Some(run)) => run_run(args, run),
        (None, None, None) => {
            bail!(
                "hgpt llc needs --checkpoint PATH, --run RUN, `dln` or `layernorm` (see hgpt llc --help)"
            )
        }
    }
}

fn run_dln(args: &DlnArgs) -> Result<()> {
    let (batch_size, settings) = args.sgld.settings(&Defaults::dln(&args.widths))?;
    let theory = aoyagi::learning_coefficient(&args.widths, args.rank)?;
    let mut net = DeepLinearNetwork::at_true_parameter(
        &args.widths,
        args.rank,
        args.samples,
        batch_size,
        args.sgld.seed,
    )?;
    let _lock = args.out.as_deref().map(claim_output).transpose()?;
    let progress = progress_bar(&settings);
    let est = estimate(&mut HostTarget::new(&mut net), &settings, &progress)?;
    progress.finish_and_clear();
    // The estimate is printed before the files are written, so a failed write
    // still leaves it on stdout.
    if args.sgld.json {
        let mut v = serde_json::to_value(est.without_traces())?;
        v["theory"] = theory.into();
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", summary(&est));
        outln!(
            "theory (Aoyagi) {theory:.4}; estimate / theory = {:.3}",
            est.estimate / theory
        );
    }
    if let Some(dir) = &args.out {
        let title = format!("DLN {:?}, rank {}", args.widths, args.rank);
        write_outputs(dir, &est, &title)?;
    }
    Ok(())
}

fn run_layernorm(args: &LayerNormArgs) -> Result<()> {
    let (batch_size, settings) = args.sgld.settings(&Defaults::LAYERNORM)?;
    if args.every == 0 {
        bail!("--every must be at least 1, got 0");
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be positive, got {}", args.lr);
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        PathBuf::from("runs").join(format!("llc-layernorm-{stamp}"))
    });
    let _lock = claim_output(&out)?;
    let schedule = Schedule {
        steps: args.steps,
        every: args.every,
        lr: args.lr,
    };
    let mut model = LayerNormMlp::example(args.sgld.seed);
    let mut log = LlcLog::create(&out.join("llc.jsonl"))?;
    let json = args.sgld.json;
    let losses =
        layernorm_mlp::llc_over_training(&mut model, &schedule, &settings, batch_size, |r| {
            if json {
                outln!("{}", serde_json::to_string(r)?);
            } else {
                outln!(
                    "step {:>5}  LLC {:>8.4} ± {:.4}{}",
                    r.step,
                    r.estimate,
                    r.std,
                    if r.warnings.is_empty() {
                        ""
                    } else {
                        "  (see warnings in llc.jsonl)"
                    }
                );
            }
            log.push(r.clone())
        })?;
    log.plot(
        &out.join("llc_over_training.png"),
        "LayerNorm example: training loss and LLC",
        &losses,
    )?;
    if !json {
        outln!(
            "wrote {}/llc.jsonl and llc_over_training.png",
            out.display()
        );
    }
    Ok(())
}

/// The backend `device` asks for (saying which on stderr), and how many models of
/// `config` will be alive on it at once (`models` of its target), each sampling
/// batches of `batch_size`, once they fit in its memory together (checked before
/// anything is allocated). An estimate's model holds what a training step holds
/// but for the two moments, where it holds its anchor w* (and on a GPU in bf16 its
/// shadow) and on the host the parameters read from its checkpoint: the training
/// plan bounds it.
fn open_for_models(
    device: DeviceChoice,
    config: &Config,
    batch_size: usize,
    models: impl FnOnce(Target) -> usize,
) -> Result<(Box<dyn Backend>, usize)> {
    let (backend, device_line) =
        backend::open(device, config.train.precision, config.model.head_size())?;
    let models = models(backend.target());
    let held = Held {
        copies: models,
        ranks: 1,
        label: match models {
            1 => String::new(),
            n => format!(" for {n} checkpoints sampled side by side"),
        },
    };
    let available = hgpt::memory::available(&backend)?;
    hgpt::memory::ensure_held_fits(
        config,
        batch_size,
        &held,
        backend.target(),
        available.as_ref(),
    )?;
    eprintln!("{device_line}");
    Ok((backend, models))
}

fn run_checkpoint(args: &LlcArgs, path: &Path) -> Result<()> {
    args.sgld.settings(&Defaults::gpt(1))?;
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    let ckpt = Checkpoint::open(path)?;
    let config = with_data(&ckpt.state.config, args);
    let (batch_size, settings) = args
        .sgld
        .settings(&Defaults::gpt(config.train.batch_size))?;
    let out = args.out.clone().unwrap_or_else(|| ckpt.dir.clone());
    let _lock = claim_output(&out)?;
    let params = ckpt.read_params()?;
    let data = gpt::training_data(&config, batch_size, Some(&ckpt.state))?;
    // One checkpoint: one model alive.
    let (backend, _) = open_for_models(args.device.device, &config, batch_size, |_| 1)?;
    let mut model = Gpt::with_params(backend, &config.model, &params);
    let progress = progress_bar(&settings);
    let seq_len = config.train.seq_len;
    let est = gpt::estimate_on(
        &mut model, data.train, batch_size, seq_len, &settings, &progress,
    )?;
    progress.finish_and_clear();
    // Printed first: a failed write still leaves the estimate on stdout.
    if args.sgld.json {
        outln!("{}", serde_json::to_string_pretty(&est.without_traces())?);
    } else {
        out!("{}", summary(&est));
    }
    let title = format!("{} step {}", run_name(&ckpt.dir), ckpt.state.step);
    write_outputs(&out, &est, &title)?;
    if !args.sgld.json {
        outln!("wrote {}/llc.json and llc.png", out.display());
    }
    Ok(())
}

fn run_run(args: &LlcArgs, run: &Path) -> Result<()> {
    args.sgld.settings(&Defaults::gpt(1))?;
    if !run.is_dir() {
        bail!("run directory {} does not exist", run.display());
    }
    let steps: Vec<(usize, PathBuf)> = checkpoint::list(run)?.into_iter().collect();
    let Some((_, first)) = steps.first() else {
        bail!(
            "{}: no checkpoints in this run (checkpoints/step_*)",
            run.display()
        );
    };
    let config = with_data(&Checkpoint::open(first)?.state.config, args);
    let (batch_size, settings) = args
        .sgld
        .settings(&Defaults::gpt(config.train.batch_size))?;
    // On the CPU, checkpoints are estimated side by side (on two cores two at once
    // beat one after another; BENCHMARKS.md has the figures), each on a model of
    // its own; a GPU takes them in turn. A group of one (on the GPU, or the last
    // of an odd count) runs on the run's one model, made when first needed, after
    // the side-by-side models are gone: at most `side_by_side` models live at once.
    let side_by_side = |target| match target {
        Target::Cpu => rayon::current_num_threads().min(steps.len()),
        Target::Cuda { .. } => 1,
    };
    let (backend, side_by_side) =
        open_for_models(args.device.device, &config, batch_size, side_by_side)?;
    let mut idle = Some(backend);
    let mut lone: Option<Gpt<Box<dyn Backend>>> = None;
    let out = args.out.clone().unwrap_or_else(|| run.to_path_buf());
    let _lock = claim_output(&out)?;
    let mut log = LlcLog::create(&out.join("llc.jsonl"))?;
    for group in steps.chunks(side_by_side) {
        let mut jobs = Vec::with_capacity(group.len());
        for (_, dir) in group {
            let ckpt = Checkpoint::open(dir)?;
            if ckpt.state.config.model != config.model {
                bail!(
                    "{}: a different model from the run's first checkpoint {}",
                    dir.display(),
                    first.display()
                );
            }
            let params = ckpt.read_params()?;
            let data = gpt::training_data(&config, batch_size, Some(&ckpt.state))?;
            jobs.push((params, data));
        }
        let progress = progress_bar(&settings);
        progress.set_length(progress.length().unwrap_or(0) * jobs.len() as u64);
        let estimates = if jobs.len() == 1 {
            let (params, data) = jobs.pop().expect("one job");
            let model = lone.get_or_insert_with(|| {
                let backend = idle.take().expect("the backend waits for the lone model");
                Gpt::new(backend, &config.model)
            });
            model.write_params(&params);
            let seq_len = config.train.seq_len;
            vec![gpt::estimate_on(
                model, data.train, batch_size, seq_len, &settings, &progress,
            )]
        } else {
            gpt::estimate_side_by_side(jobs, &config, batch_size, &settings, &progress)
        };
        progress.finish_and_clear();
        for ((step, _), est) in group.iter().zip(estimates) {
            let record = StepLlc::new(*step, &est?);
            if args.sgld.json {
                outln!("{}", serde_json::to_string(&record)?);
            } else {
                outln!("{}", step_line(&record));
            }
            log.push(record)?;
        }
    }
    let losses = train_losses(&run.join("metrics.jsonl"))?;
    let title = format!("{}: training loss and LLC", run_name(run));
    log.plot(&out.join("llc_over_training.png"), &title, &losses)?;
    if !args.sgld.json {
        outln!(
            "wrote {}/llc.jsonl and llc_over_training.png",
            out.display()
        );
    }
    Ok(())
}

/// The run's config, sampling `--data` instead of its own data when given.
fn with_data(config: &Config, args: &LlcArgs) -> Config {
    let mut config = config.clone();
    if let Some(dir) = &args.data {
        config.data.dir = dir.to_string_lossy().into_owned();
    }
    config
}

/// (step, training loss) from a run's metrics.jsonl; empty when there is none.
/// Damaged lines are skipped: a log never blocks an estimate.
fn train_losses(metrics: &Path) -> Result<Vec<(usize, f64)>> {
    if !metrics.exists() {
        return Ok(Vec::new());
    }
    let records = hgpt::train::metrics::read_records(metrics, usize::MAX)?;
    Ok(records
        .train
        .iter()
        .map(|r| (r.step, r.train_loss))
        .collect())
}

/// The run directory's name, for titles (RUN/checkpoints/step_N -> RUN).
fn run_name(path: &Path) -> String {
    let run = match path.parent() {
        Some(p) if p.file_name().is_some_and(|n| n == "checkpoints") => p.parent(),
        _ => Some(path),
    };
    run.and_then(|r| r.file_name())
        .map_or("run".into(), |n| n.to_string_lossy().into_owned())
}

/// Creates `dir`, writes and removes a probe file in it, so that an estimate that
/// takes minutes is not computed for an output it cannot write, and takes the
/// directory's run lock for the writes to come: a second process writing there
/// (another llc, or training in a run directory) fails at once naming the holder.
fn claim_output(dir: &Path) -> Result<RunLock> {
    let fail = |e: std::io::Error| {
        anyhow::anyhow!(
            "output directory {} is not writable (nothing estimated): {e}",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".hgpt-write-probe");
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    lock::acquire(dir)
}

/// A bar over every SGLD step of every chain: drawn on a terminal, else told as
/// a line now and then.
fn progress_bar(settings: &SgldSettings) -> ProgressBar {
    let steps = settings.chains * (settings.burnin + settings.draws);
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr())
        .with_style(
            ProgressStyle::with_template("sgld {bar:40} {pos}/{len} steps, eta {eta}")
                .expect("valid template"),
        );
    super::progress_lines(&bar, "llc sgld steps");
    bar
}

/// An estimate as lines for a person: the estimate, the settings, the diagnostics, the warnings.
fn summary(e: &LlcEstimate) -> String {
    let s = &e.settings;
    let mut out = format!(
        "LLC estimate {:.4} ± {:.4} (std over {} chains)\n",
        e.estimate,
        e.std,
        e.chain_estimates.len()
    );
    let epsilon = if s.tune_epsilon {
        format!("{:.3e} (tuned from {:.3e})", e.epsilon, s.epsilon)
    } else {
        format!("{:.3e}", s.epsilon)
    };
    out += &format!(
        "  initial loss {:.6}, {} parameters, batch {}, nbeta {:.4}, epsilon {epsilon}, gamma {}\n",
        e.init_loss, e.num_params, e.batch_size, s.nbeta, s.gamma
    );
    out += &format!(
        "  {} chains x {} draws after {} burn-in steps, {:.1}s\n",
        e.chain_estimates.len(),
        s.draws,
        s.burnin,
        e.seconds
    );
    out += &format!(
        "  draws below the initial loss {:.1}%, trace levelled off: {}, diverged chains: {}\n",
        100.0 * e.fraction_below_init,
        if e.levelled { "yes" } else { "no" },
        e.diverged_chains
    );
    for w in &e.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}

/// A record of the LLC over a run as one line for a person: step, estimate, and the first warning if any.
fn step_line(r: &StepLlc) -> String {
    let warning = r
        .warnings
        .first()
        .map_or(String::new(), |w| format!("  warning: {w}"));
    format!(
        "step {:>8}  LLC {:>10.4} ± {:.4}  loss at w* {:.4}{warning}",
        r.step, r.estimate, r.std, r.init_loss
    )
}
