//! `hgpt train`: a new run, `--resume RUN` or `--init CHECKPOINT`, shown as a
//! progress bar on a terminal and as log lines otherwise, ending in the run's
//! summary on stderr.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use hgpt::backend::DeviceChoice;
use hgpt::checkpoint::Checkpoint;
use hgpt::config::Config;
use hgpt::observe::Observer;
use hgpt::train::metrics::{EvalRecord, TrainRecord};
use hgpt::train::{Job, Summary, TrainObserver};

use super::{ConfigArgs, DeviceArgs};

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
    #[arg(long, value_name = "RUN")]
    resume: Option<PathBuf>,
    /// Start a new run from the parameters of a checkpoint (fine-tuning, e.g. of an
    /// imported model), with a fresh optimizer at step 0. Its config is the
    /// checkpoint's, with any --config/--set/--steps/--data change but to the model
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Data-parallel ranks: the global batch is train.batch_size x train.grad_accum
    /// x N. On the CPU backend the N ranks are threads of this process
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    ranks: u64,
}

pub fn run(args: TrainArgs) -> Result<()> {
    hgpt::train::signals::install()?;
    let mut view = TrainView::default();
    let (device, ranks) = (args.device.device, args.ranks as usize);
    // Without a GPU, `auto` is the CPU, whose ranks are threads of this process.
    let on_cpu = device == DeviceChoice::Cpu
        || (device == DeviceChoice::Auto && hgpt::backend::cuda::device_count().is_err());
    if ranks > 1 && !on_cpu {
        bail!(
            "--ranks {ranks} runs thread-ranks on --device cpu; on GPUs start one process per GPU with a launcher (see README, Data parallel)"
        );
    }
    let out;
    let (job, config) = if let Some(run) = &args.resume {
        let saved = Checkpoint::open_run(run)?.state.config;
        (Job::Resume { run }, args.config.load_or(saved)?)
    } else {
        out = args.out.clone().unwrap_or_else(|| {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            PathBuf::from("runs").join(format!("{}-{stamp}", args.config.name()))
        });
        let init = args.init.as_deref();
        let config: Config = match init {
            Some(init) => args.config.load_or(Checkpoint::open(init)?.state.config)?,
            None => args.config.load()?,
        };
        (Job::New { out: &out, init }, config)
    };
    let summary = match ranks {
        1 => hgpt::train::run_job(job, &config, device, &mut view)?,
        _ => hgpt::train::run_threads(job, &config, ranks, &mut view)?,
    };
    print_summary(&summary);
    Ok(())
}

/// Training as the user sees it: a progress bar on a terminal, log lines otherwise.
#[derive(Default)]
struct TrainView {
    bar: Option<ProgressBar>,
    max_steps: usize,
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
    fn start(&mut self, first_step: usize, max_steps: usize) {
        self.max_steps = max_steps;
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
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step as u64);
                bar.set_message(format!(
                    "loss {:.4} | lr {:.2e} | {:.0} tok/s",
                    r.train_loss, r.lr, r.tokens_per_s
                ));
            }
            None => eprintln!(
                "step {:>6}/{} | loss {:.4} | lr {:.2e} | norm {:.3} | {:.0} tok/s",
                r.step, self.max_steps, r.train_loss, r.lr, r.grad_norm, r.tokens_per_s
            ),
        }
    }

    fn evaluated(&mut self, r: &EvalRecord) {
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
