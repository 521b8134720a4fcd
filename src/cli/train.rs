//! `hgpt train`: a new run, `--resume RUN [--from-step N]` or `--init CHECKPOINT`, shown as a log
//! line per logged step on stdout (with a progress bar on a terminal), ending in
//! the run's summary on stderr. Under a launcher (torchrun, srun, mpirun: see
//! `hgpt::dist::launch`) this process is one rank of a run and first meets the
//! others (`hgpt::dist::rendezvous`); `--ranks N` starts the ranks itself.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use hgpt::backend::{DeviceChoice, GpuPrecision, Target};
use hgpt::bench::{H100_BF16_TFLOPS, flops_per_token};
use hgpt::checkpoint::Checkpoint;
use hgpt::config::Config;
use hgpt::dist::Place;
use hgpt::dist::launch::{self, Launch};
use hgpt::dist::rendezvous::{self, Init, RunId, Timing};
use hgpt::model::ParamLayout;
use hgpt::observe::Observer;
use hgpt::train::metrics::{EvalRecord, TrainRecord};
use hgpt::train::{Job, Summary, TrainObserver};

use super::{ConfigArgs, DeviceArgs, ranks};

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Run directory (default: runs/<config name>-<timestamp>)
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in RUN from its latest checkpoint, exactly as if it had
    /// never stopped. Its config is the checkpoint's, with --config/--set/--steps
    /// changes allowed only to keys that do not change the model or the data
    /// (RUN may also be a kept checkpoint, RUN/checkpoints/step_N: --from-step N)
    #[arg(long, value_name = "RUN")]
    resume: Option<PathBuf>,
    /// With --resume: continue from the kept checkpoint of step N instead of the
    /// latest. Later checkpoints and metrics.jsonl lines are moved aside into
    /// RUN/checkpoints/abandoned-<UTC time>/, never deleted
    #[arg(long, value_name = "N", requires = "resume")]
    from_step: Option<usize>,
    /// Start a new run from the parameters of a checkpoint (fine-tuning, e.g. of an
    /// imported model), with a fresh optimizer at step 0. Its config is the
    /// checkpoint's, with any --config/--set/--steps/--data change but to the model
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Start N ranks on this node (data parallel): N processes, one per GPU, on
    /// CUDA; N thread-ranks in one process on the CPU
    #[arg(long, value_name = "N")]
    ranks: Option<usize>,
    /// How the ranks of a launched run meet: tcp (rank 0 listens on
    /// MASTER_ADDR:MASTER_PORT) or file:PATH (a file every rank sees)
    #[arg(long, value_name = "tcp|file:PATH", default_value = "tcp",
          value_parser = parse_dist_init)]
    dist_init: DistInit,
    /// Seconds the ranks wait for each other to arrive
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0,
          value_parser = parse_seconds)]
    dist_timeout: f64,
}

/// `--dist-init`, before the launcher names rank 0's host.
#[derive(Clone, Debug)]
enum DistInit {
    Tcp,
    File(PathBuf),
}

fn parse_dist_init(s: &str) -> Result<DistInit> {
    match s.strip_prefix("file:") {
        _ if s == "tcp" => Ok(DistInit::Tcp),
        Some(path) if !path.is_empty() => Ok(DistInit::File(PathBuf::from(path))),
        _ => bail!("expected tcp or file:PATH"),
    }
}

fn parse_seconds(s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t.is_finite() => Ok(t),
        _ => bail!("expected a positive number of seconds"),
    }
}

pub fn run(mut args: TrainArgs) -> Result<()> {
    resume_from_step_dir(&mut args)?;
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    match (args.ranks, launch::from_env(&env)?) {
        (Some(n), Some(l)) => bail!(
            "--ranks {n} starts its own ranks, but {} already made this process rank {} of {}: leave out --ranks under a launcher",
            l.launcher,
            l.place.rank,
            l.place.world
        ),
        (Some(0), None) => bail!("--ranks 0: a run needs at least one rank"),
        (Some(n), None) => match resolve(args.device.device) {
            DeviceChoice::Cpu => thread_ranks(&args, n),
            // Every rank is told the run directory, so all name the same one.
            _ => {
                let out = (args.out.is_none() && args.resume.is_none()).then(|| out_dir(&args));
                ranks::spawn(n, out.as_deref(), &env)
            }
        },
        // A lone CPU rank (a one-task Slurm job) is a plain run.
        (None, Some(l))
            if l.place.world == 1 && resolve(args.device.device) == DeviceChoice::Cpu =>
        {
            single(&args)
        }
        (None, Some(l)) => one_rank(&args, &l),
        (None, None) => single(&args),
    }
}

/// `--resume RUN/checkpoints/step_N` read as `--resume RUN --from-step N`.
fn resume_from_step_dir(args: &mut TrainArgs) -> Result<()> {
    let Some(path) = &args.resume else {
        return Ok(());
    };
    let Some((run, step)) = hgpt::checkpoint::run_and_step_of(path) else {
        return Ok(());
    };
    if let Some(n) = args.from_step.filter(|&n| n != step) {
        bail!(
            "--resume {} is the checkpoint of step {step}, but --from-step is {n}: give one of them",
            path.display()
        );
    }
    args.resume = Some(run);
    args.from_step = Some(step);
    Ok(())
}

/// A run in this process alone.
fn single(args: &TrainArgs) -> Result<()> {
    hgpt::train::signals::install()?;
    let config = config_of(args)?;
    let mut view = TrainView::new(&config, 1);
    let out = out_dir(args);
    let summary = hgpt::train::run_job(job_of(args, &out), &config, args.device.device, &mut view)?;
    print_summary(&summary);
    Ok(())
}

/// What the arguments ask of the run in `out` (see [`out_dir`]).
fn job_of<'a>(args: &'a TrainArgs, out: &'a Path) -> Job<'a> {
    match &args.resume {
        Some(run) => Job::Resume {
            run,
            from: args.from_step,
        },
        None => Job::New {
            out,
            init: args.init.as_deref(),
        },
    }
}

/// The run's config: the checkpoint's under --resume and --init, with the
/// command line's changes.
fn config_of(args: &TrainArgs) -> Result<Config> {
    if let Some(run) = &args.resume {
        let ckpt = match args.from_step {
            Some(step) => Checkpoint::open_step(run, step)?,
            None => Checkpoint::open_run(run)?,
        };
        args.config.load_or(ckpt.state.config)
    } else if let Some(init) = &args.init {
        args.config.load_or(Checkpoint::open(init)?.state.config)
    } else {
        args.config.load()
    }
}

/// The run directory: --resume's or --out, else runs/<config name>-<timestamp>.
fn out_dir(args: &TrainArgs) -> PathBuf {
    args.resume.clone().or(args.out.clone()).unwrap_or_else(|| {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        PathBuf::from("runs").join(format!("{}-{stamp}", args.config.name()))
    })
}

/// `--device auto` made definite: CUDA when a GPU is usable.
fn resolve(device: DeviceChoice) -> DeviceChoice {
    match device {
        DeviceChoice::Auto if hgpt::backend::cuda::device_count().is_ok() => DeviceChoice::Cuda,
        DeviceChoice::Auto => DeviceChoice::Cpu,
        definite => definite,
    }
}

/// This process as one rank of a launched run: it meets the others, then trains
/// its part. On the CPU, whose ranks are threads of one process, it stops after
/// the meeting (which has checked that every rank runs the same config).
fn one_rank(args: &TrainArgs, l: &Launch) -> Result<()> {
    let config = config_of(args)?;
    let place = l.place;
    let init = match &args.dist_init {
        DistInit::File(path) => Init::File(path.clone()),
        DistInit::Tcp => match &l.master_addr {
            Some(host) => Init::Tcp {
                host: host.clone(),
                port: l.master_port,
            },
            None if place.world == 1 => Init::Tcp {
                host: String::new(),
                port: l.master_port,
            },
            None => bail!(
                "rank {} of {} ({}): MASTER_ADDR is not set; export it as rank 0's host, or use --dist-init file:PATH",
                place.rank,
                place.world,
                l.launcher
            ),
        },
    };
    let timing = Timing::new(Duration::from_secs_f64(args.dist_timeout));
    let run_id = RunId::of(&config);
    let out = out_dir(args);
    if resolve(args.device.device) == DeviceChoice::Cpu {
        // Rank 0's run directory, so every rank names the same one.
        let theirs = out.display().to_string();
        let payload = (place.rank == 0).then_some(theirs.as_bytes());
        let joined = rendezvous::join(place, &init, &run_id, payload, timing)?;
        joined.heartbeat.finish();
        bail!(
            "rank {} of {} met its peers for run {} (config {}), but the CPU backend runs a run's ranks as threads of one process: use `hgpt train --device cpu --ranks {}` instead of {}",
            place.rank,
            place.world,
            String::from_utf8_lossy(&joined.payload),
            run_id.config,
            place.world,
            l.launcher
        );
    }
    // Without a usable GPU the NCCL library is beside the point: say so first.
    hgpt::backend::cuda::device_count()?;
    let nccl_id = if place.rank == 0 {
        Some(nccl_unique_id()?)
    } else {
        None
    };
    let joined = rendezvous::join(place, &init, &run_id, nccl_id.as_deref(), timing)?;
    hgpt::train::signals::install()?;
    // A rank blocked in a collective cannot poll: a lost peer ends this process
    // at once, naming it (checkpoints are written atomically, so none is torn).
    joined.heartbeat.on_lost(|line| {
        eprintln!("error: {line}");
        std::process::exit(1);
    });
    let mut view = TrainView {
        shows_steps: place.rank == 0,
        ..TrainView::new(&config, place.world)
    };
    let result = train_rank(
        &config,
        job_of(args, &out),
        place,
        &joined.payload,
        &mut view,
    );
    match &result {
        Ok(_) => joined.heartbeat.finish(),
        Err(e) => joined.heartbeat.fail(&format!("{e:#}")),
    }
    let summary = result?;
    if place.rank == 0 {
        print_summary(&summary);
    }
    Ok(())
}

/// Rank 0's NCCL unique id, the payload of a CUDA run's rendezvous.
fn nccl_unique_id() -> Result<Vec<u8>> {
    Ok(hgpt::dist::nccl::unique_id()?.to_vec())
}

/// One rank of a distributed CUDA run: its GPU (the only one it sees, as `--ranks`
/// starts it, or its local rank's under a launcher) joined to the NCCL group that
/// rank 0's unique id names.
fn train_rank(
    config: &Config,
    job: Job,
    place: Place,
    nccl_id: &[u8],
    view: &mut TrainView,
) -> Result<Summary> {
    let id: hgpt::dist::nccl::UniqueId = nccl_id.try_into().map_err(|_| {
        anyhow!(
            "rank {}: the rendezvous carried {} bytes, not a 128-byte NCCL unique id",
            place.rank,
            nccl_id.len()
        )
    })?;
    let visible = hgpt::backend::cuda::device_count()?;
    let ordinal = if visible == 1 { 0 } else { place.local_rank };
    let (backend, device_line) =
        hgpt::backend::open_gpu(config.train.precision, config.model.head_size(), ordinal)?;
    let nccl = hgpt::dist::nccl::Nccl::new(&backend, place, &id)?;
    let device_line = format!("{device_line}; NCCL rank {} of {}", place.rank, place.world);
    hgpt::train::run_rank(
        job,
        config,
        Box::new(backend),
        device_line,
        Box::new(nccl),
        view,
    )
}

/// `--ranks N` on the CPU: N thread-ranks in this process.
fn thread_ranks(args: &TrainArgs, n: usize) -> Result<()> {
    hgpt::train::signals::install()?;
    let config = config_of(args)?;
    let mut view = TrainView::new(&config, n);
    let out = out_dir(args);
    let summary = hgpt::train::run_threads(job_of(args, &out), &config, n, &mut view)?;
    print_summary(&summary);
    Ok(())
}

/// Training as the user sees it: a line per logged step on stdout, as nanoGPT and
/// llm.c print them (terminal or not), with a progress bar on stderr when that is
/// a terminal; notes and validation losses on stderr.
struct TrainView {
    bar: Option<ProgressBar>,
    max_steps: usize,
    /// Data-parallel ranks (GPUs) sharing the step.
    ranks: usize,
    /// Tokens per optimizer step (all ranks), and llm.c's model FLOPs per token.
    tokens_per_step: usize,
    flops_per_token: f64,
    /// The MFU denominator, TFLOP/s: H100 dense bf16 on a GPU in bf16, as `hgpt
    /// bench` has it; None where no fixed peak applies (the CPU, fp32 on a GPU).
    peak_tflops: Option<f64>,
    /// Whether this process prints the step and validation lines: every rank logs the
    /// same global figures, so only rank 0 of a multi-process run does.
    shows_steps: bool,
}

impl TrainView {
    /// The view of a run of `config` on `ranks` data-parallel ranks.
    fn new(config: &Config, ranks: usize) -> TrainView {
        let t = &config.train;
        let params = ParamLayout::new(&config.model).total;
        TrainView {
            bar: None,
            max_steps: t.max_steps,
            ranks,
            tokens_per_step: t.batch_size * t.seq_len * t.grad_accum * ranks,
            flops_per_token: flops_per_token(config, params),
            peak_tflops: None,
            shows_steps: true,
        }
    }

    /// The log line of a step, e.g.
    /// `step    100/300 | loss 2.1234 | lr 3.00e-03 | norm 0.412 | 85.1 ms | 24064 tok/s | MFU -`.
    fn line(&self, r: &TrainRecord) -> String {
        let ms = 1e3 * self.tokens_per_step as f64 / r.tokens_per_s;
        let mfu = self.peak_tflops.map_or("-".into(), |peak| {
            format!(
                "{:.1}%",
                100.0 * self.flops_per_token * r.tokens_per_s / (peak * 1e12 * self.ranks as f64)
            )
        });
        format!(
            "step {:>6}/{} | loss {:.4} | lr {:.2e} | norm {:.3} | {ms:.1} ms | {:.0} tok/s | MFU {mfu}",
            r.step, self.max_steps, r.train_loss, r.lr, r.grad_norm, r.tokens_per_s
        )
    }
}

impl Observer for TrainView {
    /// A line above the bar if there is one.
    fn note(&mut self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl TrainObserver for TrainView {
    fn start(&mut self, first_step: usize, max_steps: usize, target: Target) {
        self.max_steps = max_steps;
        self.peak_tflops = match target {
            Target::Cuda {
                precision: GpuPrecision::Bf16,
                ..
            } => Some(H100_BF16_TFLOPS),
            _ => None,
        };
        self.bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(max_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(first_step as u64);
            bar
        });
    }

    fn logged(&mut self, r: &TrainRecord) {
        if !self.shows_steps {
            return;
        }
        let line = self.line(r);
        // A closed stdout (its reader has quit) does not stop training.
        let print = || {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        };
        match &self.bar {
            Some(bar) => {
                bar.suspend(print);
                bar.set_position(r.step as u64);
                bar.set_message(format!("loss {:.4}", r.train_loss));
            }
            None => print(),
        }
    }

    fn evaluated(&mut self, r: &EvalRecord) {
        if !self.shows_steps {
            return;
        }
        let line = format!(
            "step {:>6}/{} | val loss {:.4}",
            r.step, self.max_steps, r.val_loss
        );
        self.note(&line);
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// The lines that end a training run.
fn print_summary(s: &Summary) {
    let checkpoint_line = s
        .last_checkpoint
        .as_ref()
        .map_or("none written".into(), |c| c.display().to_string());
    let out = s.run_dir.display();
    if s.interrupted {
        eprintln!(
            "interrupted at step {}; checkpoint: {checkpoint_line}; continue with `hgpt train --resume {out}`",
            s.steps
        );
        return;
    }
    eprintln!(
        "done: {} steps in {:.1}s ({:.0} tok/s); train loss {}, val loss {}, unigram entropy {:.4}",
        s.steps,
        s.elapsed_s,
        s.tokens_per_s,
        s.final_train_loss.map_or("-".into(), |l| format!("{l:.4}")),
        s.final_val_loss.map_or("-".into(), |v| format!("{v:.4}")),
        s.unigram_entropy
    );
    eprintln!(
        "run directory: {out} (config.toml, metrics.jsonl, loss.png); checkpoint: {checkpoint_line}"
    );
}
