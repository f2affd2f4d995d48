//! The configured catalog and warehouse (REST or PostgreSQL, S3) against the embedded default
//! (SQLite, a local folder), end to end in the same run: one runner each reads the same topic
//! into tables of its own, committing every second.

use super::{cpu_per_million, fill_topic, per_second, quantile, run_runners, scratch_config};
use crate::catalog::{namespace_ident, open_catalog};
use crate::config::{CatalogConfig, Config, PipelineConfig};
use crate::pipeline::RunSummary;

/// Rows per commit in both runs: many commits, so that their latency has percentiles.
const COMMIT_ROWS: usize = 5_000;

/// Adds the comparison rows, unless the configured catalog is the embedded default.
pub async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    events: usize,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let Some(configured) = configured_catalog(pipeline) else {
        row(
            "configured catalog vs embedded default",
            "skipped: the configured catalog is the embedded default".into(),
        );
        return Ok(());
    };
    let id = format!(
        "bench_storage_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    let dir = tempfile::tempdir()?;
    let mut embedded = scratch_config(config, pipeline, dir.path(), &id)?;
    embedded.pipelines[0].commit.max_rows = COMMIT_ROWS;
    let produced = fill_topic(&embedded.pipelines[0], events).await?;
    let remote = scratch_in_configured_catalog(config, pipeline, &embedded.pipelines[0], &id);

    let mut walls = Vec::new();
    for (label, scratch) in [
        ("embedded default", &embedded),
        (configured.as_str(), &remote),
    ] {
        let (summaries, timed) = run_runners(scratch, 1).await?;
        let summary = summaries.into_iter().next().unwrap_or_default();
        anyhow::ensure!(
            summary.messages as usize == produced.count,
            "{label}: read {} of {} events",
            summary.messages,
            produced.count
        );
        row(
            &format!("end to end, {label}"),
            format!(
                "{}, {}",
                per_second(produced.count, timed.wall),
                cpu_per_million(produced.count, timed.cpu)
            ),
        );
        row(
            &format!("  commit latency, {label}"),
            commit_latency(&summary),
        );
        walls.push((timed.wall, timed.cpu));
    }
    if let [(embedded_wall, embedded_cpu), (remote_wall, remote_cpu)] = walls[..] {
        row(
            "configured vs embedded (wall clock, CPU)",
            format!(
                "{:.2}x, {:.2}x",
                remote_wall.as_secs_f64() / embedded_wall.as_secs_f64().max(1e-9),
                remote_cpu.as_secs_f64() / embedded_cpu.as_secs_f64().max(1e-9)
            ),
        );
    }
    drop_scratch(&remote).await;
    Ok(())
}

/// `pipeline` with the embedded scratch's topics and group, writing to a namespace of its own
/// (and checkpoints in a folder of their own) in the configured catalog.
/// The pipeline's catalog and warehouse, for row names; `None` when they are the embedded
/// default (SQLite, a local folder).
pub(crate) fn configured_catalog(pipeline: &PipelineConfig) -> Option<String> {
    let sink = &pipeline.sink;
    match &sink.catalog {
        CatalogConfig::Sqlite { warehouse, .. } if !warehouse.contains("://") => None,
        CatalogConfig::Sqlite { warehouse, .. } | CatalogConfig::Postgres { warehouse, .. } => {
            Some(format!("{} catalog, {warehouse}", sink.catalog.kind()))
        }
        CatalogConfig::Rest { uri, .. } => Some(format!("rest catalog at {uri}")),
    }
}

pub(crate) fn scratch_in_configured_catalog(
    config: &Config,
    pipeline: &PipelineConfig,
    embedded: &PipelineConfig,
    id: &str,
) -> Config {
    let mut p = pipeline.clone();
    p.name = embedded.name.clone();
    p.source.topic = embedded.source.topic.clone();
    p.source.group_id = format!("{id}-configured");
    p.source.start_from = embedded.source.start_from;
    p.dead_letter.topic = embedded.dead_letter.topic.clone();
    p.commit = embedded.commit.clone();
    p.batch = embedded.batch.clone();
    p.sink.namespace = id.to_string();
    p.sink.checkpoints = p
        .sink
        .checkpoints
        .map(|folder| format!("{}/{id}", folder.trim_end_matches('/')));
    Config {
        pipelines: vec![p],
        sql_endpoint: config.sql_endpoint.clone(),
        collector: config.collector.clone(),
        base_dir: config.base_dir.clone(),
        file: config.file.clone(),
    }
}

/// Commits, and their latency (both tables) at the median and the 99th percentile.
fn commit_latency(summary: &RunSummary) -> String {
    let mut times = summary.commit_times.clone();
    times.sort_unstable();
    format!(
        "{} commits: p50 {:.0} ms, p99 {:.0} ms",
        times.len(),
        quantile(&times, 0.50).as_secs_f64() * 1e3,
        quantile(&times, 0.99).as_secs_f64() * 1e3
    )
}

/// Purges the scratch tables and drops their namespace from the configured catalog; a failure
/// only leaves them behind, with a warning.
async fn drop_scratch(scratch: &Config) {
    let sink = &scratch.pipelines[0].sink;
    let dropped = async {
        let catalog = open_catalog(scratch, sink).await?;
        let namespace = namespace_ident(&sink.namespace)?;
        for table in [&sink.events_table.name, &sink.metrics_table.name] {
            let ident = iceberg::TableIdent::new(namespace.clone(), table.clone());
            catalog.purge_table(&ident).await?;
        }
        catalog.drop_namespace(&namespace).await?;
        anyhow::Ok(())
    };
    if let Err(err) = dropped.await {
        tracing::warn!(namespace = %sink.namespace, "could not drop the benchmark's tables: {err:#}");
    }
}
