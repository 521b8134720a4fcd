//! `hgpt export` and `hgpt import`: a checkpoint to and from a Hugging Face model
//! directory, each saying what it wrote on stderr.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use hgpt::export::Dtype;

use super::CheckpointArgs;

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    from: CheckpointArgs,
    /// Output directory (created if needed; an earlier export there is replaced
    /// whole; never a checkpoint or run directory)
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
pub struct ImportArgs {
    /// A directory with config.json, model.safetensors and tokenizer.json: a
    /// GPT2LMHeadModel (OpenAI's GPT-2 included) or an `hgpt export`
    #[arg(long, value_name = "DIR")]
    hf: PathBuf,
    /// The checkpoint directory to create, for eval, generate and train --init
    #[arg(long, value_name = "CHECKPOINT")]
    out: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let options = hgpt::export::ExportOptions {
        dtype: args.dtype,
        license: args.license,
        datasets: args.datasets,
    };
    let line = hgpt::export::export_checkpoint(&args.from.checkpoint, &args.out, &options)?;
    eprintln!("{line}");
    Ok(())
}

pub fn import(args: ImportArgs) -> Result<()> {
    eprintln!("{}", hgpt::export::import_checkpoint(&args.hf, &args.out)?);
    Ok(())
}
