//! The `hgpt` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use hgpt::backend::DeviceChoice;
use hgpt::checkpoint::Checkpoint;
use hgpt::config::Config;
use hgpt::data::prepare::{PrepareOptions, TokenizerSource, prepare};
use hgpt::export::Dtype;
use hgpt::llc;

#[derive(Parser)]
#[command(
    name = "hgpt",
    version,
    about = "Pretrain small GPTs with a harmonic (Euclidean-distance) output head"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (with no arguments: configs/tiny.toml on the built-in corpus)
    Train(TrainArgs),
    /// Measure training throughput: tokens/s, ms/step, MFU, peak memory (per-op
    /// GEMM efficiency on the CPU)
    Bench(BenchArgs),
    /// Plan the memory of a training step (CPU and GPU, with and without head
    /// chunking) and the largest micro-batch that fits a GPU
    Memory(MemoryArgs),
    /// Estimate the local learning coefficient (LLC): of a checkpoint, of every
    /// checkpoint of a run, of a deep linear network (`dln`), or across the
    /// LayerNorm example's loss drop (`layernorm`)
    Llc(Box<llc::command::LlcArgs>),
    /// Score a checkpoint on data: loss, perplexity, bits per byte
    Eval(EvalArgs),
    /// Generate text from a checkpoint, streamed as it is produced
    Generate(GenerateArgs),
    /// Tokenize text into llm.c-format token shards for `train --data DIR`
    Prepare(PrepareArgs),
    /// Write a checkpoint as a Hugging Face model directory (transformers loads it)
    Export(ExportArgs),
    /// Turn a Hugging Face GPT-2 directory (or an hgpt export) into a checkpoint
    Import(ImportArgs),
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
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Shorthand for --set data.dir=DIR (a directory made by `hgpt prepare`, or llm.c shards)
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        self.load_or(Config::tiny())
    }

    /// The config, with `default` in place of the tiny config when no file is given.
    fn load_or(&self, default: Config) -> Result<Config> {
        let mut overrides = self.overrides.clone();
        if let Some(n) = self.steps {
            overrides.push(format!("train.max_steps={n}"));
        }
        if let Some(dir) = &self.data {
            // Quoted so the value stays a TOML string whatever the path holds.
            let dir = toml::Value::String(dir.display().to_string());
            overrides.push(format!("data.dir={dir}"));
        }
        Config::load_or(self.config.as_deref(), default, &overrides)
    }

    /// The config with `--micro-batch B` applied as train.batch_size (validated with
    /// the rest).
    fn load_with_micro_batch(&self, micro_batch: Option<usize>) -> Result<Config> {
        let mut with = ConfigArgs {
            config: self.config.clone(),
            overrides: self.overrides.clone(),
            steps: self.steps,
            data: self.data.clone(),
        };
        if let Some(b) = micro_batch {
            if b == 0 {
                anyhow::bail!("--micro-batch 0: must be at least 1");
            }
            with.overrides.push(format!("train.batch_size={b}"));
        }
        with.load()
    }

    /// "tiny" for the built-in config, else the config file's stem.
    fn name(&self) -> String {
        self.config
            .as_ref()
            .and_then(|p| p.file_stem())
            .map_or("tiny".into(), |s| s.to_string_lossy().into_owned())
    }
}

/// Where the model runs; every command that runs the model takes it.
#[derive(Args)]
struct DeviceArgs {
    /// auto: the GPU when the CUDA driver and a device are present, else the CPU
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
}

#[derive(Args)]
struct TrainArgs {
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

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Warm-up steps before timing (timed steps: --steps, default 10)
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Sequences per micro-batch (shorthand for --set train.batch_size=B)
    #[arg(long, value_name = "B")]
    micro_batch: Option<usize>,
    /// Peak TFLOP/s for MFU (default: 989, H100 SXM dense bf16, on the GPU in bf16;
    /// the measured GEMM peak on the CPU and for fp32)
    #[arg(long, value_name = "X")]
    peak_tflops: Option<f64>,
    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MemoryArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Sequences per micro-batch (default: the config's train.batch_size)
    #[arg(long, value_name = "B")]
    micro_batch: Option<usize>,
    /// GPU memory sizes to fit the largest micro-batch into, GiB (default: an H100
    /// 80GB's 79.65 and an H200's 140.4, as nvidia-smi reports them)
    #[arg(long, value_name = "GIB", value_delimiter = ',')]
    gpu_memory: Vec<f64>,
    /// Print one JSON object instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint directory (RUN/checkpoints/step_N), or a run directory for its
    /// latest checkpoint
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// A directory made by `hgpt prepare` (its val split unless --split train), or a
    /// UTF-8 text file, tokenized with the checkpoint's tokenizer
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// Score at most N tokens
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Tokens between the starts of successive windows of the model's context; each
    /// token is scored once, with at least context - S tokens before it (default:
    /// the context, i.e. windows side by side)
    #[arg(long, value_name = "S")]
    stride: Option<usize>,
    /// Which split of a prepared directory to score
    #[arg(long, value_enum, default_value = "val")]
    split: hgpt::eval::Split,
    /// Print one JSON object (loss, perplexity, tokens, bits_per_byte for text)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct GenerateArgs {
    /// A checkpoint directory (RUN/checkpoints/step_N), or a run directory for its
    /// latest checkpoint
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// Text to continue; only its last context-length tokens are used
    #[arg(long, value_name = "TEXT", default_value = "")]
    prompt: String,
    /// Tokens to generate (fewer if the model ends the document)
    #[arg(long, value_name = "N", default_value_t = 200)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token each time (greedy)
    #[arg(long, value_name = "T", default_value_t = 1.0)]
    temperature: f32,
    /// Sample only among the K most likely tokens (0: all)
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Random seed; the same seed gives the same text (default: a random one,
    /// printed to stderr)
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct ExportArgs {
    /// A checkpoint directory (RUN/checkpoints/step_N), or a run directory for its
    /// latest checkpoint
    #[arg(long, value_name = "PATH")]
    checkpoint: PathBuf,
    /// Output directory (created if needed; files in it are replaced)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Precision of the weights written
    #[arg(long, default_value = "f32", value_name = "f32|bf16|f16")]
    dtype: Dtype,
    /// License of the model, a Hub identifier (mit, apache-2.0, ...), for the
    /// model card README.md (default: none stated)
    #[arg(long, value_name = "ID")]
    license: Option<String>,
    /// A Hub dataset the model was trained on (owner/name), for the model card
    /// (repeatable)
    #[arg(long = "dataset", value_name = "ID")]
    datasets: Vec<String>,
}

#[derive(Args)]
struct ImportArgs {
    /// A directory with config.json, model.safetensors and tokenizer.json: a
    /// GPT2LMHeadModel (OpenAI's GPT-2 included) or an `hgpt export`
    #[arg(long, value_name = "DIR")]
    hf: PathBuf,
    /// The checkpoint directory to create, for eval, generate and train --init
    #[arg(long, value_name = "CHECKPOINT")]
    out: PathBuf,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("tokenizer_source").args(["tokenizer", "gpt2_bpe", "train_tokenizer"])))]
struct PrepareArgs {
    /// Text files, directories of them, JSON Lines (.jsonl) or Parquet (.parquet)
    /// files; .gz and .zst files are decompressed
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    input: Vec<PathBuf>,
    /// Output directory for the shards, tokenizer.json and manifest.json
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The string field of each JSON Lines record, or the string column of a
    /// Parquet file, that holds the document
    #[arg(long, default_value = "text", value_name = "NAME")]
    jsonl_field: String,
    /// A Hugging Face tokenizer.json (default: the built-in byte-level tokenizer)
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// GPT-2's BPE files
    #[arg(long, num_args = 2, value_names = ["ENCODER_JSON", "VOCAB_BPE"])]
    gpt2_bpe: Option<Vec<PathBuf>>,
    /// Train a byte-level BPE of this vocabulary size on the input
    #[arg(long, value_name = "VOCAB_SIZE")]
    train_tokenizer: Option<usize>,
    /// Share of documents held out for validation (at least one document)
    #[arg(long, default_value_t = 0.005, value_name = "F")]
    val_fraction: f64,
    /// Tokens per shard
    #[arg(long, default_value_t = 100_000_000, value_name = "N")]
    shard_tokens: u64,
}

impl PrepareArgs {
    fn options(self) -> PrepareOptions {
        let tokenizer = match (self.tokenizer, self.gpt2_bpe, self.train_tokenizer) {
            (Some(file), _, _) => TokenizerSource::File(file),
            (_, Some(files), _) => TokenizerSource::Gpt2Bpe {
                encoder: files[0].clone(),
                merges: files[1].clone(),
            },
            (_, _, Some(vocab)) => TokenizerSource::Train(vocab),
            _ => TokenizerSource::Bytes,
        };
        PrepareOptions {
            inputs: self.input,
            out: self.out,
            jsonl_field: self.jsonl_field,
            tokenizer,
            val_fraction: self.val_fraction,
            shard_tokens: self.shard_tokens,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => {
            hgpt::train::signals::install()?;
            if let Some(run) = &args.resume {
                let saved = Checkpoint::open_run(run)?.state.config;
                hgpt::train::resume(run, &args.config.load_or(saved)?, args.device.device)?;
                return Ok(());
            }
            let out = args.out.unwrap_or_else(|| {
                let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
                PathBuf::from("runs").join(format!("{}-{stamp}", args.config.name()))
            });
            if let Some(init) = &args.init {
                let saved = Checkpoint::open(init)?.state.config;
                let config = args.config.load_or(saved)?;
                hgpt::train::fine_tune(init, &config, &out, args.device.device)?;
                return Ok(());
            }
            let config = args.config.load()?;
            hgpt::train::run(&config, &out, args.device.device)?;
        }
        Command::Bench(args) => {
            let mut config = args.config.load_with_micro_batch(args.micro_batch)?;
            if args.config.steps.is_none() {
                config.train.max_steps = 10;
            }
            let report = hgpt::bench::run(&hgpt::bench::BenchRequest {
                config: &config,
                warmup: args.warmup,
                device: args.device.device,
                peak_tflops: args.peak_tflops,
            })?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
        }
        Command::Memory(args) => {
            let config = args.config.load_with_micro_batch(args.micro_batch)?;
            let gpu_gib = if args.gpu_memory.is_empty() {
                hgpt::memory::DEFAULT_GPU_GIB.to_vec()
            } else {
                args.gpu_memory
            };
            if let Some(g) = gpu_gib.iter().find(|g| !(**g > 0.0 && g.is_finite())) {
                anyhow::bail!("--gpu-memory {g}: must be a positive number of GiB");
            }
            let report = hgpt::memory::report(&config, config.train.batch_size, &gpu_gib);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
        }
        Command::Llc(args) => llc::command::run(&args)?,
        Command::Eval(args) => {
            let report = hgpt::eval::run(&hgpt::eval::EvalRequest {
                checkpoint: &args.checkpoint,
                data: &args.data,
                split: args.split,
                max_tokens: args.max_tokens,
                stride: args.stride,
                device: args.device.device,
            })?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.line());
            }
        }
        Command::Generate(args) => {
            hgpt::generate::run(
                &hgpt::generate::GenerateRequest {
                    checkpoint: &args.checkpoint,
                    prompt: &args.prompt,
                    max_new_tokens: args.max_new_tokens,
                    temperature: args.temperature,
                    top_k: args.top_k,
                    seed: args.seed,
                    device: args.device.device,
                },
                &mut std::io::stdout().lock(),
            )?;
        }
        Command::Prepare(args) => {
            let options = args.options();
            let report = prepare(&options)?;
            eprintln!("{}", report.summary(&options.out));
        }
        Command::Export(args) => {
            eprintln!(
                "{}",
                hgpt::export::export_checkpoint(
                    &args.checkpoint,
                    &args.out,
                    &hgpt::export::ExportOptions {
                        dtype: args.dtype,
                        license: args.license,
                        datasets: args.datasets,
                    }
                )?
            );
        }
        Command::Import(args) => {
            eprintln!("{}", hgpt::export::import_checkpoint(&args.hf, &args.out)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{at}: {msg} (please report this)");
        std::process::exit(101);
    }));
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
