//! `hgpt prepare`: text into token shards, a tokenizer and a manifest, with a
//! summary line on stderr.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use hgpt::data::prepare::{PrepareOptions, TokenizerSource, prepare};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::whole;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("tokenizer_source").args(["tokenizer", "gpt2_bpe", "train_tokenizer"])))]
pub struct PrepareArgs {
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
    #[arg(long, value_name = "VOCAB_SIZE", allow_negative_numbers = true, value_parser = whole::<usize>)]
    train_tokenizer: Option<usize>,
    /// Share of documents held out for validation (at least one document)
    #[arg(
        long,
        default_value_t = 0.005,
        value_name = "F",
        allow_negative_numbers = true
    )]
    val_fraction: f64,
    /// Seeds the random choice of validation documents
    #[arg(long, default_value_t = 1337, value_name = "S")]
    seed: u64,
    /// Tokens per shard
    #[arg(long, default_value_t = 100_000_000, value_name = "N", allow_negative_numbers = true, value_parser = whole::<u64>)]
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
            seed: self.seed,
            shard_tokens: self.shard_tokens,
        }
    }
}

pub fn run(args: PrepareArgs) -> Result<()> {
    let options = args.options();
    let inputs: Vec<&std::path::Path> = options.inputs.iter().map(|p| p.as_path()).collect();
    hgpt::checkpoint::guard::check_output("--out", &options.out, &inputs)?;
    let report = prepare(&options, &progress_bar())?;
    eprintln!("{}", report.summary(&options.out));
    for warning in &report.warnings {
        eprintln!("{warning}");
    }
    Ok(())
}

/// A bar over the input bytes, drawn on stderr when it is a terminal, else told
/// as a line now and then.
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}, {msg}, eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message("0k tokens/s");
    super::progress_lines(&bar, "prepare: input bytes");
    bar
}
