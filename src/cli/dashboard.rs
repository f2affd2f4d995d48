//! `dashboard`: the campaign dashboard over the tables, without running the pipeline.

use std::net::SocketAddr;
use std::path::Path;

use clap::Args;

use crate::dashboard::{self, DEFAULT_LISTEN};

/// Flags of `dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Where to listen.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Pipeline whose tables to show (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Serves the dashboard until SIGINT/SIGTERM.
pub async fn run(config_path: &Path, args: &DashboardArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let shutdown = super::stop_on_signals("stopping the dashboard")?;
    println!(
        "dashboard of pipeline {} on http://{}/",
        pipeline.name, args.listen
    );
    dashboard::serve(&config, pipeline, args.listen, None, shutdown).await?;
    Ok(true)
}
