//! The commands of the `hgpt` binary: their arguments (clap), and what they print.
//! The library computes and returns values; these modules parse, call it, and
//! render its reports, notes and progress on stdout and stderr.

/// `println!` that returns a closed stdout (its reader, such as `head`, has
/// quit) as an error through `?` instead of panicking; `main` ends quietly on it.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// `print!` as [`outln!`] is `println!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod bench;
mod config;
mod eval;
mod export;
mod generate;
mod llc;
mod memory;
mod prepare;
mod probe;
mod ranks;
mod train;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use hgpt::backend::DeviceChoice;
use hgpt::config::{Config, Resolved, VOCAB_MULTIPLE, padded_vocab};
use hgpt::observe::Observer;

#[derive(Parser)]
#[command(
    name = "hgpt",
    version,
    about = "Pretrain small GPTs with a harmonic (Euclidean-distance) output head"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (with no arguments: configs/tiny.toml on the built-in corpus)
    Train(train::TrainArgs),
    /// Measure training throughput: tokens/s, ms/step, MFU, peak memory (per-op
    /// GEMM efficiency on the CPU)
    Bench(bench::BenchArgs),
    /// Show the resolved config: a file's keys over its base and the built-in
    /// defaults, then --set overrides
    Config(config::ConfigCmdArgs),
    /// Plan the memory of a training step (CPU and GPU, with and without head
    /// chunking) and the largest micro-batch that fits a GPU
    Memory(memory::MemoryArgs),
    /// Estimate the local learning coefficient (LLC): of a checkpoint, of every
    /// checkpoint of a run, of a deep linear network (`dln`), or across the
    /// LayerNorm example's loss drop (`layernorm`)
    Llc(Box<llc::LlcArgs>),
    /// Score a checkpoint on data: loss, perplexity, bits per byte
    Eval(eval::EvalArgs),
    /// Generate text from a checkpoint, streamed as it is produced
    Generate(generate::GenerateArgs),
    /// Tokenize text into llm.c-format token shards for `train --data DIR`
    Prepare(prepare::PrepareArgs),
    /// Write a checkpoint as a Hugging Face model directory (transformers loads it)
    Export(export::ExportArgs),
    /// Turn a Hugging Face GPT-2 directory (or an hgpt export) into a checkpoint
    Import(export::ImportArgs),
    /// The head's geometry: nearest centres, analogies, a 2-D map, hidden states
    /// over a text
    Probe(Box<probe::ProbeArgs>),
}

/// Which configuration to run, shared by every command that builds a model.
#[derive(Args)]
struct ConfigArgs {
    /// TOML config file (default: the built-in configs/tiny.toml)
    #[arg(long, short, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override a config key, e.g. --set train.lr=1e-3 --set model.head=softmax
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Shorthand for --set train.max_steps=N
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = whole::<usize>)]
    steps: Option<usize>,
    /// Shorthand for --set data.dir=DIR (a directory made by `hgpt prepare`, or llm.c shards)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

impl ConfigArgs {
    /// A new run's config. When it has data but no config file or override names
    /// `model.vocab_size`, the vocabulary is the data's, padded (and said so).
    fn load(&self) -> Result<Config> {
        let resolved = Resolved::load(self.config.as_deref(), Config::tiny(), &self.overrides())?;
        let named = resolved.names("model.vocab_size");
        let mut config = resolved.config;
        if !config.data.dir.is_empty() && !named {
            let vocab = hgpt::data::vocab_of(std::path::Path::new(&config.data.dir))?;
            config.model.vocab_size = padded_vocab(vocab);
            config.validate()?;
            Stderr.note(&format!(
                "model.vocab_size = {}: the data's {vocab} tokens padded to a multiple of {VOCAB_MULTIPLE} (set model.vocab_size to choose)",
                config.model.vocab_size
            ));
        }
        Ok(config)
    }

    /// The config, with `default` in place of the tiny config when no file is given.
    fn load_or(&self, default: Config) -> Result<Config> {
        Config::load_or(self.config.as_deref(), default, &self.overrides())
    }

    /// `--set` overrides, then those `--steps` and `--data` stand for.
    fn overrides(&self) -> Vec<String> {
        let mut overrides = self.overrides.clone();
        if let Some(n) = self.steps {
            overrides.push(format!("train.max_steps={n}"));
        }
        if let Some(dir) = &self.data {
            // Quoted so the value stays a TOML string whatever the path holds.
            let dir = toml::Value::String(dir.display().to_string());
            overrides.push(format!("data.dir={dir}"));
        }
        overrides
    }

    /// "tiny" for the built-in config, else the config file's stem.
    fn name(&self) -> String {
        self.config
            .as_ref()
            .and_then(|p| p.file_stem())
            .map_or("tiny".into(), |s| s.to_string_lossy().into_owned())
    }
}

/// A count or seed flag's value: a whole number from 0 to T's largest. Such flags
/// take "-1" as their value (not as an unknown flag), so it is refused in words.
fn whole<T: std::str::FromStr + num_traits::Bounded + std::fmt::Display>(
    s: &str,
) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("must be a whole number from 0 to {}", T::max_value()))
}

/// `--micro-batch B`, checked: at least one sequence.
fn micro_batch(b: Option<usize>) -> Result<Option<usize>> {
    if b == Some(0) {
        bail!("--micro-batch 0: must be at least 1");
    }
    Ok(b)
}

/// The checkpoint a command reads (eval, generate, export).
#[derive(Args)]
struct CheckpointArgs {
    /// A checkpoint directory (RUN/checkpoints/step_N), or a run directory for its
    /// latest checkpoint
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
}

/// Where the model runs; every command that runs the model takes it.
#[derive(Args)]
struct DeviceArgs {
    /// auto: the GPU when the CUDA driver and a device are present, else the CPU
    #[arg(long, default_value_t = DeviceChoice::Auto,
          value_parser = PossibleValuesParser::new(DeviceChoice::NAMES).try_map(|s| s.parse::<DeviceChoice>()))]
    device: DeviceChoice,
}

/// Seconds between progress lines on a non-terminal stderr: `$HGPT_PROGRESS_SECS`,
/// default 10.
fn progress_every() -> std::time::Duration {
    let secs = std::env::var("HGPT_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s >= 0.0 && s.is_finite())
        .unwrap_or(10.0);
    std::time::Duration::from_secs_f64(secs)
}

/// Where stderr is no terminal (a log file, a job's output), a bar draws nothing:
/// this prints its progress there instead, one line every [`progress_every`]
/// (`prepare: input bytes: 41% (123/300), 12s elapsed, eta 17s`), until the bar
/// is finished.
fn progress_lines(bar: &indicatif::ProgressBar, what: &'static str) {
    use std::io::IsTerminal as _;
    if std::io::stderr().is_terminal() {
        return;
    }
    let (bar, every) = (bar.clone(), progress_every());
    let poll = every.clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_millis(500),
    );
    std::thread::spawn(move || {
        let mut last = std::time::Instant::now();
        while !bar.is_finished() {
            std::thread::sleep(poll);
            if last.elapsed() < every || bar.is_finished() {
                continue;
            }
            last = std::time::Instant::now();
            let (pos, elapsed) = (bar.position(), bar.elapsed().as_secs());
            Stderr.note(&match bar.length().filter(|&len| len > 0) {
                Some(len) => format!(
                    "{what}: {:.0}% ({pos}/{len}), {elapsed}s elapsed, eta {}s",
                    100.0 * pos as f64 / len as f64,
                    bar.eta().as_secs()
                ),
                // Before the work is sized (prepare training its tokenizer).
                None => format!("{what}: starting, {elapsed}s elapsed"),
            });
        }
    });
}

/// Whether `e` is a write to a stdout whose reader has gone: the end of the
/// output the reader wanted, not a failure.
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Notes from the library, one line each on stderr (dropped once stderr's reader
/// has gone, as with `2>&1 | head`).
struct Stderr;

impl Observer for Stderr {
    fn note(&mut self, line: &str) {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Runs the command the arguments name.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Memory(args) => memory::run(args),
        Command::Config(args) => config::run(args),
        Command::Llc(args) => llc::run(&args),
        Command::Eval(args) => eval::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Prepare(args) => prepare::run(args),
        Command::Export(args) => export::export(args),
        Command::Import(args) => export::import(args),
        Command::Probe(args) => probe::run(&args),
    }
}
