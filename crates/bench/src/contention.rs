//! The commit-contention model: writers that each hold a partition of their own append small
//! batches to one table through the product's validated commit (`TableWriter::commit`: decide
//! on the table state, reload and decide again on a conflict), each at the pipeline's commit
//! interval, in one process with no broker. It shows what the catalog's commit protocol does
//! as runners are added: how many commits land, how often they conflict, how long a writer
//! waits to land. Each writer count runs twice: every writer committing for itself, and the
//! same writers handing their data files and claims to one committer that lands whatever it
//! has in one snapshot (the shares travel in the JSON form a control topic carries).

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use iceberg::Catalog;
use tokio::sync::{mpsc, oneshot};

use super::{kafka_batches, quantile, records, scratch_config, storage};
use crate::catalog::open_catalog;
use crate::config::{Config, PipelineConfig};
use crate::engine::{new_session, SqlStage};
use crate::pipeline::plan::{plan_pipeline, PlannedSql};
use crate::sink::claim::{Claim, PartitionClaim};
use crate::sink::commit::is_conflict;
use crate::sink::iceberg::{ShareOutcome, SharedFiles, SnapshotContent, TableWriter};
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

/// Who lands the writers' rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Every writer commits its own snapshots, deciding again after a conflict.
    EveryWriter,
    /// The writers hand their files and claims to one committer.
    OneCommitter,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::EveryWriter => "each writer commits",
            Protocol::OneCommitter => "one committer",
        }
    }
}

/// A share on its way to the committer, with where its outcome goes.
type Handed = (SharedFiles, oneshot::Sender<Result<Handled, String>>);

/// What the committer did with a share.
struct Handled {
    outcome: ShareOutcome,
    /// Attempts of the commit that carried it.
    attempts: u32,
}

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
            for protocol in [Protocol::EveryWriter, Protocol::OneCommitter] {
                let figures = run(&scratch, protocol, writers, interval, options.seconds).await?;
                row(
                    &format!(
                        "commit contention, {label}, {writers} writers, {}",
                        protocol.label()
                    ),
                    figures.describe(writers, interval, options.seconds),
                );
            }
        }
    }
    Ok(())
}

/// `writers` writers landing rows in the events table of `scratch` for `seconds`.
async fn run(
    scratch: &Config,
    protocol: Protocol,
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
    let rows = commit_rows(&ctx, &planned).await?;
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
            .await?
            .with_file_codec(p.sink.file_codec),
        );
    }
    let (to_committer, handed) = mpsc::channel::<Handed>(writers.max(1));
    let committer = match protocol {
        Protocol::EveryWriter => None,
        Protocol::OneCommitter => {
            let own = open_catalog(scratch, &p.sink).await?;
            let writer = TableWriter::open(
                own,
                &p.sink.namespace,
                &p.sink.events_table.name,
                &p.name,
                &planned.parse_output,
            )
            .await?
            .with_file_codec(p.sink.file_codec);
            Some(tokio::spawn(commit_shares(writer, handed)))
        }
    };
    // The run starts once every writer is open, so that opening is not counted as waiting.
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (index, writer) in opened.into_iter().enumerate() {
        // Runners start when they start: each writer's commits fall at a phase of its own,
        // spread over the interval (the golden ratio's multiples modulo 1).
        let phase = interval.mul_f64((index as f64 * 0.618_033_988_75).fract());
        let lands = match protocol {
            Protocol::EveryWriter => Lands::Itself,
            Protocol::OneCommitter => Lands::Through(to_committer.clone()),
        };
        tasks.spawn(write(
            writer,
            lands,
            index as i32,
            rows.clone(),
            Schedule {
                first: started + phase,
                interval,
                until,
            },
        ));
    }
    drop(to_committer);
    let mut runs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        runs.push(done??);
    }
    let elapsed = started.elapsed();
    let snapshots = match committer {
        Some(committer) => Some(committer.await??),
        None => None,
    };
    drop_scratch(catalog.as_ref(), scratch).await;
    Ok(Figures::of(runs, elapsed, snapshots))
}

/// The valid rows of one commit, through the pipeline's parsing SQL.
async fn commit_rows(
    ctx: &datafusion::prelude::SessionContext,
    planned: &PlannedSql,
) -> anyhow::Result<RecordBatch> {
    let stage = SqlStage::new(ctx, &planned.parse).await?;
    let mut valid = Vec::new();
    for batch in kafka_batches(&records(ROWS_PER_COMMIT), ROWS_PER_COMMIT)? {
        for out in stage.run(vec![batch]).await? {
            valid.push(super::valid_rows(&out, planned)?.to_batch()?);
        }
    }
    let schema = valid
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| anyhow::anyhow!("the parsing SQL returned no rows"))?;
    Ok(arrow::compute::concat_batches(&schema, &valid)?)
}

/// When a writer's commits fall due.
struct Schedule {
    first: Instant,
    interval: Duration,
    until: Instant,
}

/// How a writer's rows land.
enum Lands {
    /// It commits them itself.
    Itself,
    /// It hands them to the committer.
    Through(mpsc::Sender<Handed>),
}

/// One writer: from `first` on, every `interval` until `until`, appends `rows` and lands them
/// with its partition's offset moved on, decided on the table state the snapshot lands on.
async fn write(
    mut writer: TableWriter,
    lands: Lands,
    partition: i32,
    rows: RecordBatch,
    schedule: Schedule,
) -> anyhow::Result<WriterRun> {
    let mut run = WriterRun::default();
    let mut due = schedule.first;
    let mut next = None;
    while due < schedule.until {
        tokio::time::sleep_until(due.into()).await;
        writer.write(&rows).await?;
        let offset = next.unwrap_or(0) + rows.num_rows() as i64;
        let claim = Claim {
            topic: TOPIC.into(),
            partitions: [(
                partition,
                PartitionClaim {
                    starts: next,
                    records: Some(offset),
                    jump: None,
                },
            )]
            .into(),
            checkpoints: None,
        };
        let attempts = match &lands {
            Lands::Itself => commit_own(&mut writer, &claim).await?,
            Lands::Through(committer) => {
                let share = writer.share(claim).await?;
                let (reply, outcome) = oneshot::channel();
                committer
                    .send((writer.encode(share)?, reply))
                    .await
                    .map_err(|_| anyhow::anyhow!("the committer stopped"))?;
                let handled = outcome
                    .await?
                    .map_err(|error| anyhow::anyhow!("the committer failed: {error}"))?;
                match handled.outcome {
                    ShareOutcome::Landed { .. } => Some(handled.attempts),
                    ShareOutcome::Fenced(fenced) => {
                        anyhow::bail!("writer {partition} was fenced: {fenced}")
                    }
                }
            }
        };
        match attempts {
            Some(attempts) => {
                next = Some(offset);
                run.landings.push(Landing {
                    attempts,
                    took: due.elapsed(),
                });
            }
            None => run.gave_up += 1,
        }
        // A writer behind its interval commits again at once, as a runner with a backlog does.
        due = (due + schedule.interval).max(Instant::now());
    }
    Ok(run)
}

/// A writer's own commit of what it wrote under `claim`: the attempts it took, or `None` when
/// it ran out of them (its rows dropped).
async fn commit_own(writer: &mut TableWriter, claim: &Claim) -> anyhow::Result<Option<u32>> {
    let landed = writer
        .commit(|state| {
            Ok(SnapshotContent {
                offsets: claim.decide(&state.offsets)?,
                checkpoints: None,
                jumps: Default::default(),
            })
        })
        .await;
    match landed {
        Ok(stats) => Ok(Some(stats.conflicts + 1)),
        Err(SinkError::Iceberg { source, .. }) if is_conflict(&source) => {
            writer.abandon();
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// The committer: waits for a share, takes every other one waiting too, and lands them in one
/// snapshot; until the writers are gone. Returns the snapshots it made.
async fn commit_shares(
    mut writer: TableWriter,
    mut handed: mpsc::Receiver<Handed>,
) -> anyhow::Result<usize> {
    let mut snapshots = 0;
    while let Some(first) = handed.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = handed.try_recv() {
            batch.push(more);
        }
        let (sent, replies): (Vec<SharedFiles>, Vec<_>) = batch.into_iter().unzip();
        let landed = async {
            let shares = sent
                .into_iter()
                .map(|shared| writer.decode(shared))
                .collect::<Result<Vec<_>, _>>()?;
            writer
                .commit_with(|state| Ok(SnapshotContent::unchanged(state)), &shares)
                .await
        }
        .await;
        match landed {
            Ok((stats, outcomes)) => {
                snapshots += usize::from(stats.snapshot_id.is_some());
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(Handled {
                        outcome,
                        attempts: stats.conflicts + 1,
                    }));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.to_string()));
                }
                return Err(error.into());
            }
        }
    }
    Ok(snapshots)
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
    /// Snapshots the committer made (with one committer).
    snapshots: Option<usize>,
}

impl Figures {
    fn of(runs: Vec<WriterRun>, elapsed: Duration, snapshots: Option<usize>) -> Self {
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
            snapshots,
        }
    }

    fn describe(&self, writers: usize, interval: Duration, seconds: u64) -> String {
        let offered = writers as f64 / interval.as_secs_f64();
        let snapshots = self.snapshots.map_or_else(String::new, |snapshots| {
            format!(
                " in {:.2} snapshots/s",
                snapshots as f64 / self.elapsed.as_secs_f64().max(seconds as f64)
            )
        });
        format!(
            "{:.2} commits/s landed{snapshots} of {offered:.2} offered ({} in {:.0} s), {:.2} conflicts per commit, attempts p99 {}, due to landed p50 {} ms p99 {} ms longest {} ms (interval {} ms), {} gave up, {} of {writers} writers starved",
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
