//! `dashboard`: the campaign dashboard over the tables, without running the pipeline.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use crate::dashboard::{self, DEFAULT_LISTEN};
use crate::pipeline;

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
    let (stop, shutdown) = pipeline::shutdown_channel();
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        let _ = stop.send(true);
    });
    println!(
        "dashboard of pipeline {} on http://{}/",
        pipeline.name, args.listen
    );
    dashboard::serve(&config, pipeline, args.listen, None, shutdown).await?;
    Ok(true)
}
