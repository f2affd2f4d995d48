//! `collect`: the HTTP endpoint apps post events to, in front of the pipeline's source topic.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use clap::Args;

use crate::collect::CollectorServer;

/// Flags of `collect`.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Where it listens (default: `collector.listen`, 127.0.0.1:8090).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Pipeline whose source topic receives the events (default: `collector.pipeline`, or the
    /// only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Collects until SIGINT/SIGTERM, then finishes the requests in flight and flushes.
pub async fn run(config_path: &Path, args: &CollectArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let name = args
        .pipeline
        .as_deref()
        .or(config.collector.pipeline.as_deref());
    let pipeline = config.pipeline(name)?;
    let server = CollectorServer::bind(&config, pipeline, args.listen)
        .await
        .context("starting the collector")?;
    let address = server.local_addr()?;
    println!(
        "collector of pipeline {} on http://{address}/v1/events (to topic {})",
        pipeline.name, pipeline.source.topic
    );
    let shutdown = super::stop_on_signals("stopping the collector")?;
    server.serve(shutdown).await?;
    Ok(true)
}
