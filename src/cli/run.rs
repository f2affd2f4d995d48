//! `run`: the streaming job, until SIGINT/SIGTERM (or until caught up).

use std::path::Path;

use clap::Args;

use std::sync::Arc;

use crate::common::error::Causes;
use crate::pipeline::{self, RunOptions};
use crate::telemetry::Telemetry;

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run only this pipeline (default: every pipeline of the file, side by side).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Stop once the tables hold every partition of the topic up to its end (backfills, tests):
    /// this runner's own, read and committed, and those other runners hold.
    #[arg(long)]
    pub until_caught_up: bool,
    /// With --until-caught-up: also emit the windows still open at the end (a backfill that
    /// must leave nothing behind); later events for those windows then count as late.
    #[arg(long, requires = "until_caught_up")]
    pub flush_open_windows: bool,
    /// With --until-caught-up: give up (exit non-zero) after holding no partition this long
    /// (other runners of the consumer group hold them all), or after the partitions other
    /// runners hold made no progress in the tables this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "until_caught_up")]
    pub max_unassigned: std::time::Duration,
    /// Read on where a partition's offsets jumped instead of stopping: events the topic deleted
    /// (retention) before the tables read them are skipped, and the runner says how many.
    #[arg(long)]
    pub accept_offset_jumps: bool,
    /// Also serve the dashboard and Prometheus `/metrics` of the (first) pipeline while running.
    #[arg(long)]
    pub dashboard: bool,
    /// Where the dashboard listens.
    #[arg(long, default_value = crate::dashboard::DEFAULT_LISTEN, requires = "dashboard")]
    pub listen: std::net::SocketAddr,
    /// Also serve the read-only PostgreSQL-wire SQL endpoint over the (first) pipeline's tables
    /// (`sql_endpoint` in pipelines.yaml; the password comes from the environment).
    #[arg(long)]
    pub sql: bool,
    /// Where the SQL endpoint listens (default: `sql_endpoint.listen`).
    #[arg(long, requires = "sql")]
    pub sql_listen: Option<std::net::SocketAddr>,
}

/// Runs the selected pipelines and prints what each did.
pub async fn run(config_path: &Path, args: &RunArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    let shutdown = super::stop_on_signals("stopping: finishing the batch in hand and committing")?;

    let pipelines = config.selected(args.pipeline.as_deref())?;
    let telemetry: Vec<Arc<Telemetry>> = pipelines
        .iter()
        .map(|p| Arc::new(Telemetry::new(&p.name)))
        .collect();
    // Bound before any event is consumed, so a missing password or a taken port stops the run
    // before it starts.
    let sql = match (args.sql, pipelines.first()) {
        (true, Some(first)) => Some(super::serve::bind_sql(&config, first, args.sql_listen).await?),
        _ => None,
    };
    let (dashboard_stop, dashboard_shutdown) = pipeline::shutdown_channel();
    let sql = sql.map(|server| tokio::spawn(server.serve(dashboard_shutdown.clone())));
    let dashboard = match (args.dashboard, pipelines.first(), telemetry.first()) {
        (true, Some(first), Some(t)) => {
            let (config, first, t, listen) =
                (config.clone(), (*first).clone(), t.clone(), args.listen);
            Some(tokio::spawn(async move {
                crate::dashboard::serve(&config, &first, listen, Some(t), dashboard_shutdown).await
            }))
        }
        _ => None,
    };
    let (maintenance_stop, maintenance_shutdown) = pipeline::shutdown_channel();
    let maintenance: Vec<_> = pipelines
        .iter()
        .filter(|p| p.maintenance.enabled)
        .map(|p| {
            let (config, p, stop) = (config.clone(), (*p).clone(), maintenance_shutdown.clone());
            tokio::spawn(crate::maintain::background(config, p, stop))
        })
        .collect();
    let runs = pipelines.iter().zip(&telemetry).map(|(p, t)| {
        let options = RunOptions {
            until_caught_up: args.until_caught_up,
            flush_open_windows: args.flush_open_windows,
            shutdown: shutdown.clone(),
            telemetry: Some(t.clone()),
            max_unassigned: args.max_unassigned,
            accept_offset_jumps: args.accept_offset_jumps,
        };
        pipeline::run(&config, p, options)
    });
    let results = futures::future::join_all(runs).await;
    // A pass in progress finishes, so that it leaves no half-written files behind.
    let _ = maintenance_stop.send(true);
    for task in maintenance {
        let _ = task.await;
    }
    let _ = dashboard_stop.send(true);
    if let Some(server) = sql {
        let _ = server.await;
    }
    if let Some(server) = dashboard {
        match server.await {
            Ok(Err(err)) => eprintln!("error: {}", Causes(&err)),
            Err(err) => eprintln!("error: dashboard task: {err}"),
            Ok(Ok(())) => {}
        }
    }
    let mut ok = true;
    for (p, result) in pipelines.iter().zip(results) {
        match result {
            Ok(summary) => {
                let letters: Vec<String> = summary
                    .dead_letters
                    .iter()
                    .map(|(category, n)| format!("{category} {n}"))
                    .collect();
                println!(
                    "pipeline {}: {} messages, {} rows written to {}.{} and {} windows to {}.{} in {} commits ({} commit conflicts, {} fenced), {} dead letters ({}); offsets {}",
                    p.name,
                    summary.messages,
                    summary.rows,
                    p.sink.namespace,
                    p.sink.events_table.name,
                    summary.windows,
                    p.sink.namespace,
                    p.sink.metrics_table.name,
                    summary.commits,
                    summary.commit_conflicts,
                    summary.fenced,
                    summary.dead_letters.values().sum::<u64>(),
                    letters.join(", "),
                    summary.offsets.to_json(),
                );
            }
            Err(err) => {
                ok = false;
                eprintln!("error: {}", Causes(&err));
            }
        }
    }
    Ok(ok)
}
