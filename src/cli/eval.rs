//! `hgpt eval`: the score as one line, or as JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use hgpt::eval::{EvalRequest, Report};

use super::{CheckpointArgs, DeviceArgs, Stderr, whole};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    from: CheckpointArgs,
    /// A directory made by `hgpt prepare` (its val split unless --split train), or a
    /// UTF-8 text file, tokenized with the checkpoint's tokenizer
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// Score at most N tokens
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = whole::<usize>)]
    max_tokens: Option<usize>,
    /// Tokens between the starts of successive windows of the model's context; each
    /// token is scored once, with at least context - S tokens before it (default:
    /// the context, i.e. windows side by side)
    #[arg(long, value_name = "S", allow_negative_numbers = true, value_parser = whole::<usize>)]
    stride: Option<usize>,
    /// Which split of a prepared directory to score
    #[arg(long, value_enum, default_value = "val")]
    split: Split,
    /// Print one JSON object (loss, perplexity, tokens, bits_per_byte for text)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Which split of a prepared directory to score.
#[derive(Clone, Copy, ValueEnum)]
pub enum Split {
    Val,
    Train,
}

impl From<Split> for hgpt::eval::Split {
    fn from(split: Split) -> hgpt::eval::Split {
        match split {
            Split::Val => hgpt::eval::Split::Val,
            Split::Train => hgpt::eval::Split::Train,
        }
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    let request = EvalRequest {
        checkpoint: &args.from.checkpoint,
        data: &args.data,
        split: args.split.into(),
        max_tokens: args.max_tokens,
        stride: args.stride,
        device: args.device.device,
    };
    let report = hgpt::eval::run(&request, &mut Stderr)?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!("{}", line(&report));
    }
    Ok(())
}

/// The report in one line for a person.
fn line(r: &Report) -> String {
    let bpb = r
        .bits_per_byte
        .map_or(String::new(), |b| format!(" | {b:.4} bits/byte"));
    format!(
        "loss {:.4} nats/token | perplexity {:.3}{bpb} | {} tokens scored",
        r.loss, r.perplexity, r.tokens
    )
}
