//! The commit-contention model: writers that each hold a partition of their own append small
//! batches to one table through the product's validated commit (`TableWriter::commit`: decide
//! on the table state, reload and decide again on a conflict), each at the pipeline's commit
//! interval, in one process with no broker. It shows what the catalog's commit protocol does
//! as runners are added: how many commits land, how often they conflict, how long a writer
//! waits to land.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use iceberg::Catalog;

use super::{kafka_batches, quantile, records, scratch_config, storage};
use crate::catalog::open_catalog;
use crate::common::{Offsets, ERROR_COLUMN};
use crate::config::{Config, PipelineConfig};
use crate::engine::{new_session, split_rejected, SqlStage};
use crate::pipeline::plan::{plan_pipeline, PlannedSql};
use crate::sink::commit::is_conflict;
use crate::sink::iceberg::{SnapshotContent, TableWriter};
use crate::sink::SinkError;

/// What to run.
#[derive(Debug, Clone)]
pub struct ContentionOptions {
    /// Writer counts, one run each.
    pub writers: Vec<usize>,
    /// How long each run lasts (0 skips the rows).
    pub seconds: u64,
}

/// Rows per commit: a small append, a runner's share of a quiet topic between two commits.
const ROWS_PER_COMMIT: usize = 100;

/// The topic the writers' offsets name.
const TOPIC: &str = "bench_contention";

/// One writer's commit that landed.
struct Landing {
    /// Tries until it landed (1: no conflict).
    attempts: u32,
    /// From when the commit was due until it landed (files written, snapshot committed).
    took: Duration,
}

/// What one writer saw over a run.
#[derive(Default)]
struct WriterRun {
    landings: Vec<Landing>,
    /// Commits that ran out of attempts (their rows dropped).
    gave_up: usize,
}

/// Adds one row per writer count on the embedded default (SQLite, a local folder) and, when the
/// pipeline's catalog is another one, one per writer count on it.
pub async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    options: &ContentionOptions,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let interval = pipeline.commit.interval;
    let configured = storage::configured_catalog(pipeline);
    for &writers in &options.writers {
        let dir = tempfile::tempdir()?;
        let id = format!(
            "bench_contention_{}_{}_{writers}",
            std::process::id(),
            chrono::Utc::now().timestamp()
        );
        let embedded = scratch_config(config, pipeline, dir.path(), TOPIC)?;
        let mut runs = vec![("embedded SQLite".to_string(), embedded.clone())];
        if let Some(label) = &configured {
            runs.push((
                label.clone(),
                storage::scratch_in_configured_catalog(
                    config,
                    pipeline,
                    &embedded.pipelines[0],
                    &id,
                ),
            ));
        }
        for (label, scratch) in runs {
            let figures = run(&scratch, writers, interval, options.seconds).await?;
            row(
                &format!("commit contention, {label}, {writers} writers"),
                figures.describe(writers, interval, options.seconds),
            );
        }
    }
    Ok(())
}

/// `writers` writers committing to the events table of `scratch` for `seconds`.
async fn run(
    scratch: &Config,
    writers: usize,
    interval: Duration,
    seconds: u64,
) -> anyhow::Result<Figures> {
    let p = &scratch.pipelines[0];
    let ctx = new_session();
    let planned = plan_pipeline(scratch, p, &ctx)
        .await
        .map_err(|problems| anyhow::anyhow!("SQL problems: {problems:?}"))?;
    crate::setup::ensure_tables(scratch, p, &planned).await?;
    let rows = valid_rows(&ctx, &planned).await?;
    let catalog = open_catalog(scratch, &p.sink).await?;
    let mut opened = Vec::with_capacity(writers);
    for _ in 0..writers {
        // A catalog client of its own, as each runner process has (its own connection pool or
        // HTTP client), so that the writers do not queue for one client's connections.
        let own = open_catalog(scratch, &p.sink).await?;
        opened.push(
            TableWriter::open(
                own,
                &p.sink.namespace,
                &p.sink.events_table.name,
                &p.name,
                &planned.parse_output,
            )
            .await?,
        );
    }
    // The run starts once every writer is open, so that opening is not counted as waiting.
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, writer) in opened.into_iter().enumerate() {
        // Runners start when they start: each writer's commits fall at a phase of its own,
        // spread over the interval (the golden ratio's multiples modulo 1).
        let phase = interval.mul_f64((index as f64 * 0.618_033_988_75).fract());
        tasks.spawn(write(
            writer,
            index as i32,
            rows.clone(),
            started + phase,
            interval,
            until,
        ));
    }
    let mut runs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        runs.push(done??);
    }
    drop_scratch(catalog.as_ref(), scratch).await;
    Ok(Figures::of(runs, started.elapsed()))
}

/// The valid rows of one commit, through the pipeline's parsing SQL.
async fn valid_rows(
    ctx: &datafusion::prelude::SessionContext,
    planned: &PlannedSql,
) -> anyhow::Result<RecordBatch> {
    let stage = SqlStage::new(ctx, &planned.parse).await?;
    let mut valid = Vec::new();
    for batch in kafka_batches(&records(ROWS_PER_COMMIT), ROWS_PER_COMMIT)? {
        for out in stage.run(vec![batch]).await? {
            valid.push(split_rejected(&out, ERROR_COLUMN)?.0);
        }
    }
    let schema = valid
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| anyhow::anyhow!("the parsing SQL returned no rows"))?;
    Ok(arrow::compute::concat_batches(&schema, &valid)?)
}

/// One writer: from `first` on, every `interval` until `until`, appends `rows` and commits
/// them with its partition's offset moved on, decided on the table state the commit lands on.
async fn write(
    mut writer: TableWriter,
    partition: i32,
    rows: RecordBatch,
    first: Instant,
    interval: Duration,
    until: Instant,
) -> anyhow::Result<WriterRun> {
    let mut run = WriterRun::default();
    let mut due = first;
    let mut next = 0_i64;
    while due < until {
        tokio::time::sleep_until(due.into()).await;
        writer.write(&rows).await?;
        let offset = next + rows.num_rows() as i64;
        let landed = writer
            .commit(|state| {
                let mut offsets: Offsets = state.offsets.clone();
                offsets.set(TOPIC, partition, offset);
                Ok(SnapshotContent {
                    offsets,
                    checkpoints: None,
                    jumps: Default::default(),
                })
            })
            .await;
        match landed {
            Ok(stats) => {
                next = offset;
                run.landings.push(Landing {
                    attempts: stats.conflicts + 1,
                    took: due.elapsed(),
                });
            }
            Err(SinkError::Iceberg { source, .. }) if is_conflict(&source) => {
                run.gave_up += 1;
                writer.abandon();
            }
            Err(error) => return Err(error.into()),
        }
        // A writer behind its interval commits again at once, as a runner with a backlog does.
        due = (due + interval).max(Instant::now());
    }
    Ok(run)
}

/// Drops the scratch table from a catalog that outlives the run (the embedded one goes with
/// its folder).
async fn drop_scratch(catalog: &dyn Catalog, scratch: &Config) {
    let sink = &scratch.pipelines[0].sink;
    let Ok(ident) = crate::catalog::namespace_ident(&sink.namespace) else {
        return;
    };
    for name in [&sink.events_table.name, &sink.metrics_table.name] {
        let table = iceberg::TableIdent::new(ident.clone(), name.clone());
        if let Err(err) = catalog.drop_table(&table).await {
            tracing::debug!("dropping the scratch table {table}: {err}");
        }
    }
    if let Err(err) = catalog.drop_namespace(&ident).await {
        tracing::debug!("dropping the scratch namespace: {err}");
    }
}

/// The figures of one run.
struct Figures {
    landed: usize,
    gave_up: usize,
    conflicts: u64,
    attempts_p99: u32,
    took_p50: Duration,
    took_p99: Duration,
    longest: Duration,
    /// Writers that landed nothing.
    starved: usize,
    elapsed: Duration,
}

impl Figures {
    fn of(runs: Vec<WriterRun>, elapsed: Duration) -> Self {
        let starved = runs.iter().filter(|r| r.landings.is_empty()).count();
        let gave_up = runs.iter().map(|r| r.gave_up).sum();
        let landings: Vec<&Landing> = runs.iter().flat_map(|r| &r.landings).collect();
        let mut took: Vec<Duration> = landings.iter().map(|l| l.took).collect();
        took.sort();
        let mut attempts: Vec<u32> = landings.iter().map(|l| l.attempts).collect();
        attempts.sort_unstable();
        let attempts_p99 = attempts
            .get(((attempts.len() as f64 * 0.99) as usize).min(attempts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0);
        Figures {
            landed: landings.len(),
            gave_up,
            conflicts: landings.iter().map(|l| u64::from(l.attempts - 1)).sum(),
            attempts_p99,
            took_p50: quantile(&took, 0.5),
            took_p99: quantile(&took, 0.99),
            longest: took.last().copied().unwrap_or_default(),
            starved,
            elapsed,
        }
    }

    fn describe(&self, writers: usize, interval: Duration, seconds: u64) -> String {
        let offered = writers as f64 / interval.as_secs_f64();
        format!(
            "{:.2} commits/s landed of {offered:.2} offered ({} in {:.0} s), {:.2} conflicts per commit, attempts p99 {}, due to landed p50 {} ms p99 {} ms longest {} ms (interval {} ms), {} gave up, {} of {writers} writers starved",
            self.landed as f64 / self.elapsed.as_secs_f64().max(seconds as f64),
            self.landed,
            self.elapsed.as_secs_f64(),
            self.conflicts as f64 / (self.landed as f64).max(1.0),
            self.attempts_p99,
            self.took_p50.as_millis(),
            self.took_p99.as_millis(),
            self.longest.as_millis(),
            interval.as_millis(),
            self.gave_up,
            self.starved,
        )
    }
}
