//! `hgpt train`: a new run, `--resume RUN` or `--init CHECKPOINT`, shown as a log
//! line per logged step on stdout (with a progress bar on a terminal), ending in
//! the run's summary on stderr.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use hgpt::backend::{GpuPrecision, Target};
use hgpt::bench::{H100_BF16_TFLOPS, flops_per_token};
use hgpt::checkpoint::Checkpoint;
use hgpt::config::Config;
use hgpt::model::ParamLayout;
use hgpt::observe::Observer;
use hgpt::train::metrics::{EvalRecord, TrainRecord};
use hgpt::train::{Summary, TrainObserver};

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
}

pub fn run(args: TrainArgs) -> Result<()> {
    hgpt::train::signals::install()?;
    let device = args.device.device;
    let summary = if let Some(run) = &args.resume {
        let saved = Checkpoint::open_run(run)?.state.config;
        let config = args.config.load_or(saved)?;
        hgpt::train::resume(run, &config, device, &mut TrainView::new(&config))?
    } else {
        let out = args.out.unwrap_or_else(|| {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            PathBuf::from("runs").join(format!("{}-{stamp}", args.config.name()))
        });
        match &args.init {
            Some(init) => {
                let saved = Checkpoint::open(init)?.state.config;
                let config = args.config.load_or(saved)?;
                let mut view = TrainView::new(&config);
                hgpt::train::fine_tune(init, &config, &out, device, &mut view)?
            }
            None => {
                let config = args.config.load()?;
                hgpt::train::run(&config, &out, device, &mut TrainView::new(&config))?
            }
        }
    };
    print_summary(&summary);
    Ok(())
}

/// Training as the user sees it: a line per logged step on stdout, as nanoGPT and
/// llm.c print them (terminal or not), with a progress bar on stderr when that is
/// a terminal; notes and validation losses on stderr.
struct TrainView {
    bar: Option<ProgressBar>,
    max_steps: usize,
    /// Tokens per optimizer step, and llm.c's model FLOPs per token.
    tokens_per_step: usize,
    flops_per_token: f64,
    /// The MFU denominator, TFLOP/s: H100 dense bf16 on a GPU in bf16, as `hgpt
    /// bench` has it; None where no fixed peak applies (the CPU, fp32 on a GPU).
    peak_tflops: Option<f64>,
}

impl TrainView {
    fn new(config: &Config) -> TrainView {
        let t = &config.train;
        let params = ParamLayout::new(&config.model).total;
        TrainView {
            bar: None,
            max_steps: t.max_steps,
            tokens_per_step: t.batch_size * t.seq_len * t.grad_accum,
            flops_per_token: flops_per_token(config, params),
            peak_tflops: None,
        }
    }

    /// The log line of a step, e.g.
    /// `step    100/300 | loss 2.1234 | lr 3.00e-03 | norm 0.412 | 85.1 ms | 24064 tok/s | MFU -`.
    fn line(&self, r: &TrainRecord) -> String {
        let ms = 1e3 * self.tokens_per_step as f64 / r.tokens_per_s;
        let mfu = self.peak_tflops.map_or("-".into(), |peak| {
            format!(
                "{:.1}%",
                100.0 * self.flops_per_token * r.tokens_per_s / (peak * 1e12)
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
