//! `hgpt config show`: the config a command would run with, resolved (its file's
//! bases, the built-in defaults and every override laid over each other), as TOML.

use anyhow::Result;
use clap::{Args, Subcommand};

use super::ConfigArgs;

#[derive(Args)]
pub struct ConfigCmdArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the resolved config as TOML (every key, as a run's config.toml has it)
    Show {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub fn run(args: ConfigCmdArgs) -> Result<()> {
    match args.command {
        ConfigCommand::Show { config } => out!("{}", config.load()?.to_toml()),
    }
    Ok(())
}
