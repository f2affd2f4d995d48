use std::process::ExitCode;

use clap::Parser;

use campaign_pipeline::cli::{self, Cli};

fn main() -> ExitCode {
    cli::run(Cli::parse())
}
