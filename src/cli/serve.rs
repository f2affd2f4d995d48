//! `serve`: the tables for people and their tools, without running the pipeline: the built-in
//! dashboard over HTTP and the read-only PostgreSQL-wire SQL endpoint, in one process.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use clap::Args;

use crate::config::{Config, PipelineConfig};
use crate::dashboard::{self, DEFAULT_LISTEN};
use crate::sql_server::SqlServer;

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the dashboard listens.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where the SQL endpoint listens (default: `sql_endpoint.listen`, 127.0.0.1:5433).
    #[arg(long)]
    pub sql_listen: Option<SocketAddr>,
    /// Serve the dashboard only (also when `sql_endpoint.enabled` is false).
    #[arg(long)]
    pub no_sql: bool,
    /// Pipeline whose tables to serve (default: the only one).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Serves until SIGINT/SIGTERM; the SQL endpoint only with `with_sql` (not for `dashboard`).
pub async fn run(config_path: &Path, args: &ServeArgs, with_sql: bool) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let pipeline = config.pipeline(args.pipeline.as_deref())?;
    let sql = match with_sql && config.sql_endpoint.enabled && !args.no_sql {
        true => Some(bind_sql(&config, pipeline, args.sql_listen).await?),
        false => None,
    };
    let shutdown = super::stop_on_signals("stopping the servers")?;
    println!(
        "dashboard of pipeline {} on http://{}/",
        pipeline.name, args.listen
    );
    let sql = sql.map(|server| tokio::spawn(server.serve(shutdown.clone())));
    dashboard::serve(&config, pipeline, args.listen, None, shutdown).await?;
    if let Some(sql) = sql {
        sql.await?;
    }
    Ok(true)
}

/// Binds the SQL endpoint (address from the flag or the settings) and says where it is.
pub async fn bind_sql(
    config: &Config,
    pipeline: &PipelineConfig,
    listen: Option<SocketAddr>,
) -> anyhow::Result<SqlServer> {
    let listen = listen.unwrap_or(config.sql_endpoint.listen);
    let server = SqlServer::bind(config, pipeline, listen)
        .await
        .context("starting the SQL endpoint")?;
    let address = server.local_addr().unwrap_or(listen);
    println!(
        "SQL endpoint (PostgreSQL protocol, read-only) of pipeline {} on {address}: \
         postgresql://{}@{address}/{}",
        pipeline.name,
        server.user(),
        pipeline.sink.namespace,
    );
    Ok(server)
}
