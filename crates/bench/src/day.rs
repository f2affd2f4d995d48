//! A simulated day of commits, with table maintenance on and off: the commit and query cost of
//! the last 1,000 commits against the first 1,000, and the files, manifests and metadata size
//! left at the end.
//!
//! Each simulated commit is one step of the core's runner over a prepared micro-batch (parse
//! SQL, events written, the window operator's closed windows written, its state checkpointed,
//! both tables committed with their offsets), at a compressed pace. Time-based retention cannot be
//! compressed, so snapshots are kept by count: `maintenance.snapshot_max_age` over
//! `commit.interval` commits (at least `keep_snapshots`, at most `max_snapshots`), what the
//! settings keep at full pace.
//! With maintenance on, a pass starts every `maintenance.interval` of simulated time, beside
//! the commits (not between them), as in `run`. Only the idle time between commits is
//! compressed: a pass runs at real speed, and while it runs the commits arrive at the real
//! `commit.interval`, as they would in production (otherwise a 2 s pass would meet dozens of
//! commits that a day at full pace spreads over minutes, and the queries would meet the small
//! files they leave).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use crate::catalog::open_catalog;
use crate::common::SystemClock;
use crate::config::{Config, PipelineConfig};
use crate::maintain::files::LiveFiles;
use crate::maintain::Maintainer;
use crate::pipeline::{shutdown_channel, Connections, Planned, RunOptions, Runner};
use crate::replay::{DroppedDeadLetters, ReplaySource};
use campaign_core::dlq::DeadLetterWriter;
use campaign_serve::dashboard::api::{Api, Range};

/// Events per simulated commit.
const EVENTS_PER_COMMIT: usize = 40;
/// Commits compared at the start and at the end.
const WINDOW: usize = 1_000;
/// With maintenance on, the queries run every this many commits inside both windows: the file
/// count rises and falls between passes (every 12 commits at the defaults) and between the
/// metrics table's compactions (every 10 windows, 120 commits). 25 is prime to 12 and meets 24
/// phases of the 120, so each window's 40 samples spread over both cycles alike and the medians
/// compare like with like.
const QUERY_EVERY: usize = 25;

/// How the run with one setting ended.
struct DayRun {
    commits: usize,
    latencies: Vec<Duration>,
    /// Median query times over the first window (one sample without maintenance: each is slow).
    first_queries: Refresh,
    /// Medians over the last window (without maintenance: at the end).
    last_queries: Refresh,
    /// With maintenance: the same queries after one more pass at the end (the same rows in
    /// fewer files), to tell what the data's growth costs from what the files cost.
    settled_queries: Option<Refresh>,
    data_files: usize,
    manifests: usize,
    snapshots: usize,
    metadata_bytes: u64,
    passes: usize,
    /// With maintenance: median wall time of the passes started in the first and last window.
    pass_times: Option<(Duration, Duration)>,
}

/// A maintenance pass running beside the commits.
struct RunningPass {
    started: Instant,
    /// The commit it started before.
    started_at: usize,
    /// Commits made since it started: at most one per `commit.interval` of its run time.
    commits: u32,
    task: tokio::task::JoinHandle<Duration>,
}

/// Adds the simulated day's rows: `commits` with maintenance on, then the same with it off,
/// which stops after `off_budget` of wall clock (its cost grows with every commit).
pub async fn measure(
    config: &Config,
    pipeline: &PipelineConfig,
    commits: usize,
    off_budget: Duration,
    row: &mut impl FnMut(&str, String),
) -> anyhow::Result<()> {
    let commits = commits.max(2 * WINDOW);
    let simulated = pipeline.commit.interval;
    let settings = &pipeline.maintenance;
    let per_pass = (settings.interval.as_secs_f64() / simulated.as_secs_f64().max(1e-3))
        .round()
        .max(1.0) as usize;
    let keep = ((settings.snapshot_max_age.as_secs_f64() / simulated.as_secs_f64().max(1e-3))
        as usize)
        .min(settings.max_snapshots)
        .max(settings.keep_snapshots);
    row(
        "simulated day: commits, events per commit",
        format!(
            "{commits} commits of {EVENTS_PER_COMMIT} events (a commit stands for {}); maintenance every {per_pass} commits, {keep} snapshots kept",
            humantime::format_duration(simulated)
        ),
    );
    let on = day(config, pipeline, commits, Some((per_pass, keep)), None).await?;
    let off = day(config, pipeline, commits, None, Some(off_budget)).await?;
    for (label, run) in [("maintenance on", &on), ("maintenance off", &off)] {
        let (first, last) = (
            &run.latencies[..WINDOW],
            &run.latencies[run.latencies.len() - WINDOW..],
        );
        let (first, last) = (percentiles(first), percentiles(last));
        row(
            &format!("day, {label}: commits made"),
            format!(
                "{}{}",
                run.commits,
                if run.commits < commits {
                    format!(
                        " (stopped after {})",
                        humantime::format_duration(off_budget)
                    )
                } else {
                    String::new()
                }
            ),
        );
        row(
            &format!("  {label}: batch and commits p50/p99, first {WINDOW}"),
            format!("{:.1} / {:.1} ms", ms(first.0), ms(first.1)),
        );
        row(
            &format!("  {label}: batch and commits p50/p99, last {WINDOW}"),
            format!(
                "{:.1} / {:.1} ms ({:.2}x / {:.2}x the first)",
                ms(last.0),
                ms(last.1),
                ratio(last.0, first.0),
                ratio(last.1, first.1)
            ),
        );
        let (first, last) = (run.first_queries, run.last_queries);
        row(
            &format!("  {label}: dashboard refresh, first / last {WINDOW} commits"),
            format!(
                "{:.0} / {:.0} ms median ({:.2}x)",
                ms(first.dashboard),
                ms(last.dashboard),
                ratio(last.dashboard, first.dashboard)
            ),
        );
        row(
            &format!("  {label}: count(*) of the events table, first / last {WINDOW} commits"),
            format!(
                "{:.0} / {:.0} ms median ({:.2}x; a full scan follows the rows: {:.1}x as many)",
                ms(first.scan),
                ms(last.scan),
                ratio(last.scan, first.scan),
                (run.commits - WINDOW / 2) as f64 / (WINDOW / 2) as f64
            ),
        );
        if let Some((first, last)) = run.pass_times {
            row(
                &format!(
                    "  {label}: maintenance pass (both tables), first / last {WINDOW} commits"
                ),
                format!(
                    "{:.0} / {:.0} ms median ({:.2}x)",
                    ms(first),
                    ms(last),
                    ratio(last, first)
                ),
            );
        }
        if let Some(settled) = run.settled_queries {
            row(
                &format!("  {label}: the same queries after one more pass at the end"),
                format!(
                    "dashboard {:.0} ms ({:.2}x the first {WINDOW} commits'), count(*) {:.0} ms: the same rows in fewer files",
                    ms(settled.dashboard),
                    ratio(settled.dashboard, first.dashboard),
                    ms(settled.scan)
                ),
            );
        }
        row(
            &format!("  {label}: events table at the end"),
            format!(
                "{} data files in {} manifests, {} snapshots, metadata file {:.1} KiB{}",
                run.data_files,
                run.manifests,
                run.snapshots,
                run.metadata_bytes as f64 / 1024.0,
                if run.passes > 0 {
                    format!(", {} maintenance passes", run.passes)
                } else {
                    String::new()
                }
            ),
        );
    }
    Ok(())
}

async fn day(
    config: &Config,
    pipeline: &PipelineConfig,
    commits: usize,
    maintenance: Option<(usize, usize)>,
    budget: Option<Duration>,
) -> anyhow::Result<DayRun> {
    let dir = tempfile::tempdir()?;
    // The prepared batches are of the records topic: the runner records their offsets under it.
    let mut scratch = super::scratch_config(config, pipeline, dir.path(), super::RECORDS_TOPIC)?;
    let p = &mut scratch.pipelines[0];
    p.maintenance = pipeline.maintenance.clone();
    if let Some((_, keep)) = maintenance {
        p.maintenance.keep_snapshots = keep;
        p.maintenance.max_snapshots = keep;
        p.maintenance.snapshot_max_age = Duration::ZERO;
    }
    // Every micro-batch with a valid row is committed: `commit.max_rows` 1 makes each one due.
    p.commit.max_rows = 1;
    let p = scratch.pipelines[0].clone();
    let planned = Planned::new(&scratch, &p).await?;
    crate::setup::ensure_tables(&scratch, &p, planned.sql()).await?;
    let catalog = open_catalog(&scratch, &p.sink).await?;

    let generated = super::records_spaced(
        commits * EVENTS_PER_COMMIT,
        chrono::TimeDelta::milliseconds(
            (p.commit.interval.as_millis() as i64 / EVENTS_PER_COMMIT as i64).max(1),
        ),
    );
    let batches = super::micro_batches(&generated, EVENTS_PER_COMMIT)?;
    let steps = batches.len();
    let source = ReplaySource::new((0..3).collect(), batches);
    let rewinds = source.rewinds();
    let (_keep_running, shutdown) = shutdown_channel();
    let options = RunOptions {
        until_caught_up: false,
        flush_open_windows: false,
        shutdown,
        telemetry: None,
        max_unassigned: Duration::MAX,
        accept_offset_jumps: false,
    };
    let mut runner = Runner::open(
        &scratch,
        &p,
        options,
        planned,
        catalog.clone(),
        Arc::new(SystemClock),
        |_| {
            Ok::<_, std::convert::Infallible>(Connections {
                source,
                dead_letters: DeadLetterWriter::to(DroppedDeadLetters),
                topic_partitions: 3,
                control: None,
            })
        },
    )
    .await?;
    // The assignment: the runner holds every partition before the first batch.
    runner.step().await?;
    let maintainer = match maintenance {
        Some(_) => Some(Arc::new(Maintainer::open(&scratch, &p).await?)),
        None => None,
    };
    let api = Api::open(&scratch, &p, None).await?;
    let session = crate::query::session(&scratch, &p).await?;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(commits);
    let mut pass: Option<RunningPass> = None;
    let mut passes = 0;
    let mut pass_times: Vec<(usize, Duration)> = Vec::new();
    let mut first_queries = Vec::new();
    let mut last_queries = Vec::new();
    for i in 0..steps {
        if budget.is_some_and(|b| started.elapsed() > b) && i > 2 * WINDOW {
            break;
        }
        if let Some(running) = &mut pass {
            // The real pace while a pass runs: its n-th commit waits for n commit intervals of
            // its run time, unless it ends first.
            let due = running.started + p.commit.interval * running.commits;
            let ended = tokio::time::timeout_at(due.into(), &mut running.task).await;
            running.commits += 1;
            if let Ok(took) = ended {
                pass_times.push((running.started_at, took?));
                pass = None;
            }
        }
        if let (Some(maintainer), Some((every, _))) = (&maintainer, maintenance) {
            if i > 0 && i % every == 0 && pass.is_none() {
                let maintainer = maintainer.clone();
                passes += 1;
                pass = Some(RunningPass {
                    started: Instant::now(),
                    started_at: i,
                    // This iteration's commit is made while it runs.
                    commits: 1,
                    task: tokio::spawn(async move {
                        let t = Instant::now();
                        for result in maintainer.run_once().await {
                            match result {
                                Ok(report) => tracing::info!("bench maintenance: {report}"),
                                Err(err) => tracing::warn!("bench maintenance pass: {err}"),
                            }
                        }
                        t.elapsed()
                    }),
                });
            }
        }
        // The runner's own step: the batch parsed and routed, events written, the window
        // state absorbed and closed windows written, checkpoints saved, both tables committed
        // with their offsets.
        let now = Instant::now();
        runner.step().await?;
        latencies.push(now.elapsed());
        let done = i + 1;
        let sampled = maintenance.is_some() && done % QUERY_EVERY == 0;
        if (sampled && done <= WINDOW) || done == WINDOW {
            first_queries.push(queries(&api, &session).await?);
            log_shape(catalog.as_ref(), &p, done).await?;
        } else if sampled && done > commits.saturating_sub(WINDOW) {
            last_queries.push(queries(&api, &session).await?);
            log_shape(catalog.as_ref(), &p, done).await?;
        }
    }
    if let Some(running) = pass {
        pass_times.push((running.started_at, running.task.await?));
    }
    runner.finish().await?;
    let summary = runner.summary();
    // One runner holding every partition is never fenced; a rewind means a commit failed and
    // its batch was read again, which the latencies would hide.
    if summary.fenced > 0 || rewinds.load(Ordering::Relaxed) > 0 {
        anyhow::bail!(
            "a bench commit failed or was fenced ({} fenced, {} rewinds)",
            summary.fenced,
            rewinds.load(Ordering::Relaxed)
        );
    }
    let pass_times = (!pass_times.is_empty()).then(|| {
        let total = latencies.len();
        let window = |range: std::ops::Range<usize>| {
            median(
                pass_times
                    .iter()
                    .filter(|(at, _)| range.contains(at))
                    .map(|(_, took)| *took)
                    .collect(),
            )
        };
        (
            window(0..WINDOW),
            window(total.saturating_sub(WINDOW)..total),
        )
    });
    if last_queries.is_empty() {
        last_queries.push(queries(&api, &session).await?);
    }
    let mut settled_queries = None;
    if let Some(maintainer) = &maintainer {
        maintainer.run_once().await;
        let mut samples = Vec::new();
        for _ in 0..3 {
            samples.push(queries(&api, &session).await?);
        }
        settled_queries = Some(Refresh::median(&samples));
    }
    let table = crate::sink::table::load_table(
        catalog.as_ref(),
        &p.sink.namespace,
        &p.sink.events_table.name,
    )
    .await?;
    let live = LiveFiles::read(&table).await?;
    let metadata_bytes = metadata_size(&table).await?;
    Ok(DayRun {
        commits: latencies.len(),
        first_queries: Refresh::median(&first_queries),
        last_queries: Refresh::median(&last_queries),
        settled_queries,
        data_files: live.as_ref().map_or(0, |l| l.entries.len()),
        manifests: live.as_ref().map_or(0, |l| l.data_manifests()),
        snapshots: table.metadata().snapshots().count(),
        metadata_bytes,
        latencies,
        passes,
        pass_times,
    })
}

/// What one sample of the queries took.
#[derive(Debug, Clone, Copy)]
struct Refresh {
    /// The dashboard's four calls: campaigns, windows, totals, health.
    dashboard: Duration,
    /// `count(*)` over the events table: an ad-hoc full scan.
    scan: Duration,
}

impl Refresh {
    /// Each figure's median over `samples`.
    fn median(samples: &[Refresh]) -> Refresh {
        Refresh {
            dashboard: median(samples.iter().map(|r| r.dashboard).collect()),
            scan: median(samples.iter().map(|r| r.scan).collect()),
        }
    }
}

/// One dashboard refresh (campaigns, windows, totals, health) and a count over the events
/// table.
async fn queries(
    api: &Api,
    session: &datafusion::prelude::SessionContext,
) -> anyhow::Result<Refresh> {
    let range = Range::default();
    let t = Instant::now();
    api.campaigns(&range).await?;
    let campaigns = t.elapsed();
    api.windows(&range).await?;
    let windows = t.elapsed() - campaigns;
    api.totals(&range).await?;
    let dashboard = t.elapsed();
    api.health().await?;
    let health = t.elapsed() - dashboard;
    crate::query::run(session, "SELECT count(*) FROM campaign_events").await?;
    let all = t.elapsed();
    // Where the time goes, for reading the log beside the medians.
    tracing::info!(
        "bench queries: campaigns {:.0} + windows {:.0} + totals {:.0} = {:.0} ms, health {:.0} ms, count(*) {:.0} ms",
        ms(campaigns),
        ms(windows),
        ms(dashboard - campaigns - windows),
        ms(dashboard),
        ms(health),
        ms(all - dashboard - health)
    );
    Ok(Refresh {
        dashboard: dashboard + health,
        scan: all - dashboard - health,
    })
}

/// Logs what the queries met: each table's live files, manifests and their entries (every
/// status), snapshots and metadata file size.
async fn log_shape(
    catalog: &dyn iceberg::Catalog,
    pipeline: &PipelineConfig,
    done: usize,
) -> anyhow::Result<()> {
    for name in [
        &pipeline.sink.events_table.name,
        &pipeline.sink.metrics_table.name,
    ] {
        let table = crate::sink::table::load_table(catalog, &pipeline.sink.namespace, name).await?;
        let Some(live) = LiveFiles::read(&table).await? else {
            continue;
        };
        let mut entries = 0;
        let mut manifest_bytes = 0;
        for manifest in &live.manifests {
            entries += manifest
                .load_manifest(table.file_io())
                .await?
                .entries()
                .len();
            manifest_bytes += manifest.manifest_length;
        }
        let metadata_bytes = metadata_size(&table).await?;
        tracing::info!(
            "bench shape at commit {done}: {name}: {} live files, {} manifests ({} entries, {} KiB), {} snapshots, metadata {} KiB",
            live.entries.len(),
            live.manifests.len(),
            entries,
            manifest_bytes / 1024,
            table.metadata().snapshots().count(),
            metadata_bytes / 1024
        );
    }
    Ok(())
}

/// Size of the table's current metadata file.
async fn metadata_size(table: &iceberg::table::Table) -> anyhow::Result<u64> {
    Ok(match table.metadata_location() {
        Some(location) => table.file_io().new_input(location)?.metadata().await?.size,
        None => 0,
    })
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    super::quantile(&times, 0.5)
}

fn percentiles(times: &[Duration]) -> (Duration, Duration) {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    (
        super::quantile(&sorted, 0.50),
        super::quantile(&sorted, 0.99),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
