//! `hgpt generate`: text streamed to stdout as it is produced; the device, a
//! random seed and notes on stderr.

use anyhow::Result;
use clap::Args;

use hgpt::generate::GenerateRequest;

use super::{CheckpointArgs, DeviceArgs, Stderr, whole};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    from: CheckpointArgs,
    /// Text to continue; only its last context-length tokens are used
    #[arg(long, value_name = "TEXT", default_value = "")]
    prompt: String,
    /// Tokens to generate (fewer if the model ends the document)
    #[arg(long, value_name = "N", default_value_t = 200, allow_negative_numbers = true, value_parser = whole::<usize>)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token each time (greedy)
    #[arg(
        long,
        value_name = "T",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    temperature: f32,
    /// Sample only among the K most likely tokens (0: all)
    #[arg(long, value_name = "K", default_value_t = 0, allow_negative_numbers = true, value_parser = whole::<usize>)]
    top_k: usize,
    /// Random seed; the same seed gives the same text (default: a random one,
    /// printed to stderr)
    #[arg(long, value_name = "S", allow_negative_numbers = true, value_parser = whole::<u64>)]
    seed: Option<u64>,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let request = GenerateRequest {
        checkpoint: &args.from.checkpoint,
        prompt: &args.prompt,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
        device: args.device.device,
    };
    hgpt::generate::run(&request, &mut std::io::stdout().lock(), &mut Stderr)
}
