//! Wires source → parsing SQL → events table, → window → metrics table, and the dead letter
//! queue, and owns the commit loop.

pub mod events;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod rejects;
pub mod sample;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type};

use tokio::sync::watch;

use crate::catalog::open_catalog;
use crate::common::{Fenced, Offsets, ERROR_COLUMN};
use crate::config::{Config, PipelineConfig};
use crate::dlq::DeadLetterWriter;
use crate::engine::{new_session, split_rejected, SqlProblem, SqlStage};
use crate::kafka::admin::TopicAdmin;
use crate::kafka::{client_config, KafkaError};
use crate::sink::iceberg::{load_state, CommitStats};
use crate::sink::SinkError;
use crate::source::{
    KafkaSource, MicroBatch, ResumeLookup, SourceError, SourceEvent, SourceOptions,
};
use crate::telemetry::{CategoryLabel, PartitionLabel, TableLabel, Telemetry};
use crate::window::{EventTimeBounds, WindowError};
use events::EventsBranch;
use metrics::MetricsBranch;
use plan::plan_pipeline;
use progress::{resume_point, Progress, TableRole};
use rejects::{
    dead_letter, from_rejected_rows, KeyedDeadLetter, Reason, INVALID_UTF8, LATE, UNTIMED,
};

/// Why a pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The SQL does not plan; nothing was consumed.
    #[error("pipeline {pipeline}: the SQL has problems, nothing was consumed:\n{}", list(.problems))]
    Sql {
        pipeline: String,
        problems: Vec<SqlProblem>,
    },
    /// The Iceberg side failed.
    #[error("pipeline {pipeline}")]
    Sink { pipeline: String, source: SinkError },
    /// Kafka failed (dead letter delivery, clients).
    #[error("pipeline {pipeline}")]
    Kafka {
        pipeline: String,
        source: KafkaError,
    },
    /// The source failed.
    #[error("pipeline {pipeline}")]
    Source {
        pipeline: String,
        source: SourceError,
    },
    /// The window stage failed.
    #[error("pipeline {pipeline}")]
    Window {
        pipeline: String,
        source: WindowError,
    },
    /// A partition's window-state checkpoint cannot be restored into the metrics SQL's state.
    #[error("pipeline {pipeline}: table {table}, source partition {partition}: the window-state checkpoint {file} does not fit the state of {metrics_file} (was the metrics SQL changed while windows were open?)")]
    Checkpoint {
        pipeline: String,
        table: String,
        partition: i32,
        file: String,
        metrics_file: String,
        #[source]
        source: WindowError,
    },
    /// `run --until-caught-up` held no partition for too long: another runner holds them all.
    #[error("pipeline {pipeline}: this runner held no partition of {topic} for {waited:?} (the consumer group has {members} member(s)); with other runners holding every partition there is nothing for it to catch up")]
    Unassigned {
        pipeline: String,
        topic: String,
        waited: Duration,
        members: String,
    },
    /// Running the SQL on a micro-batch failed.
    #[error("pipeline {pipeline}: running {file} on the batch at {at}")]
    Execution {
        pipeline: String,
        file: String,
        at: String,
        source: datafusion::error::DataFusionError,
    },
}

fn list(problems: &[SqlProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How a run ends.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop once every assigned partition has been read to its end and committed.
    pub until_caught_up: bool,
    /// At the end, also emit the windows still open (backfills).
    pub flush_open_windows: bool,
    /// Becomes `true` when the run must finish the batch in hand, commit and stop.
    pub shutdown: watch::Receiver<bool>,
    /// Where to report metrics and health (the dashboard and `/metrics` read it).
    pub telemetry: Option<Arc<Telemetry>>,
    /// With `until_caught_up`: how long the runner may hold no partition before it gives up.
    pub max_unassigned: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Messages consumed.
    pub messages: u64,
    /// Rows committed to the events table.
    pub rows: u64,
    /// Window rows committed to the metrics table.
    pub windows: u64,
    /// Dead letter records sent, by category.
    pub dead_letters: BTreeMap<String, u64>,
    /// Iceberg commits made.
    pub commits: u64,
    /// Table commits that found another runner's commit first and were decided again.
    pub commit_conflicts: u64,
    /// Commits refused because another runner had moved partitions on (their rows dropped
    /// and read again).
    pub fenced: u64,
    /// Offsets the events table holds at the end.
    pub offsets: Offsets,
}

/// How a commit of one table ended.
pub enum Landing {
    /// It landed.
    Committed(CommitStats),
    /// Another runner had moved partitions on: nothing landed.
    Fenced(Fenced),
}

/// Runs one pipeline until it is caught up (with `until_caught_up`) or told to shut down.
pub async fn run(
    config: &Config,
    pipeline: &PipelineConfig,
    options: RunOptions,
) -> Result<RunSummary, PipelineError> {
    let name = pipeline.name.clone();
    let sink_err = |source| PipelineError::Sink {
        pipeline: name.clone(),
        source,
    };
    let kafka_err = |source| PipelineError::Kafka {
        pipeline: name.clone(),
        source,
    };
    let source_err = |source| PipelineError::Source {
        pipeline: name.clone(),
        source,
    };

    // Everything that can be wrong with the SQL or the tables is found before consuming.
    let ctx = new_session();
    let planned = plan_pipeline(config, pipeline, &ctx)
        .await
        .map_err(|problems| PipelineError::Sql {
            pipeline: name.clone(),
            problems,
        })?;
    let parse_file = config.resolve(&pipeline.sql.parse).display().to_string();
    let parse = SqlStage::new(&ctx, &planned.parse, planned.records_slot.clone())
        .await
        .map_err(|e| PipelineError::Sql {
            pipeline: name.clone(),
            problems: vec![SqlProblem::whole_file(&parse_file, e.to_string())],
        })?;
    let catalog = open_catalog(config, &pipeline.sink)
        .await
        .map_err(|e| sink_err(e.into()))?;
    let mut events = EventsBranch::open(pipeline, catalog.clone(), &planned.parse_output).await?;
    let mut metrics =
        MetricsBranch::open(config, pipeline, &ctx, &planned, catalog.clone()).await?;

    let client = client_config(&pipeline.source.brokers, &pipeline.source.properties);
    let admin = TopicAdmin::new(&client).map_err(kafka_err)?;
    for topic in [&pipeline.source.topic, &pipeline.dead_letter.topic] {
        if admin.partition_count(topic).map_err(kafka_err)?.is_none() {
            return Err(kafka_err(KafkaError::Admin {
                topic: topic.clone(),
                message: "does not exist; run `campaign-pipeline setup` first".into(),
            }));
        }
    }
    let mut dlq = DeadLetterWriter::new(&client, &pipeline.dead_letter.topic).map_err(kafka_err)?;
    let topic = pipeline.source.topic.clone();
    let mut source = KafkaSource::start(
        &client,
        SourceOptions {
            topic: topic.clone(),
            group_id: pipeline.source.group_id.clone(),
            start_from: pipeline.source.start_from,
            max_rows: pipeline.batch.max_rows,
            max_wait: pipeline.batch.max_wait,
        },
        resume_lookup(pipeline, catalog.clone()),
    )
    .map_err(source_err)?;

    let mut progress = Progress::new(&topic);
    let mut summary = RunSummary::default();
    let mut window = CommitWindow::new();
    let mut shutdown = options.shutdown.clone();
    let mut unassigned_since = Some(Instant::now());
    let stages = Stages {
        parse: &parse,
        parse_file: &parse_file,
        pipeline: &name,
        bounds: EventTimeBounds::new(pipeline.window.max_future, pipeline.window.max_past),
        time_column: &planned.window.time_column,
    };
    let mut branches = Branches {
        events: &mut events,
        metrics: &mut metrics,
    };
    loop {
        let event = tokio::select! {
            event = source.next() => event,
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let Some(event) = event else { break };
        let batch = match event.map_err(source_err)? {
            SourceEvent::Revoked => {
                let dropped = branches.drop_buffered().await;
                progress.hold(&BTreeSet::new(), &Offsets::new(), &Offsets::new());
                tracing::info!(pipeline = %name, dropped_rows = dropped, "partitions revoked: dropped what was not committed");
                unassigned_since = Some(Instant::now());
                continue;
            }
            SourceEvent::Assigned { partitions } => {
                branches.hold(&mut progress, &partitions).await?;
                // Position every held partition from this load, and leave out whatever the
                // source read before it: a rewind asked for before this rebalance may still be
                // on its way to the source, and must not drop batches of this assignment.
                source.rewind(partitions.clone(), progress.resume());
                tracing::info!(pipeline = %name, ?partitions, resume = %progress.resume().to_json(), "holding partitions");
                unassigned_since = partitions.is_empty().then(Instant::now);
                continue;
            }
            SourceEvent::Batch(batch) => batch,
        };
        if let Some(since) = unassigned_since.filter(|_| options.until_caught_up) {
            if since.elapsed() > options.max_unassigned {
                return Err(PipelineError::Unassigned {
                    pipeline: name.clone(),
                    topic,
                    waited: since.elapsed(),
                    members: source
                        .group_members()
                        .map_or_else(|| "an unknown number of".into(), |n| n.to_string()),
                });
            }
        }
        let caught_up = batch.caught_up;
        tracing::debug!(
            rows = batch.records.num_rows(),
            not_utf8 = batch.not_utf8.len(),
            next = %batch.next_offsets.to_json(),
            "micro-batch"
        );
        window.messages += batch.message_count() as u64;
        summary.messages += batch.message_count() as u64;
        if let Some(t) = &options.telemetry {
            t.events_consumed.inc_by(batch.message_count() as u64);
        }
        let letters = stages.process(&batch, &progress, &mut branches).await?;
        progress.handed_on(&batch.next_offsets);
        for letter in letters {
            if letter.0.error == LATE {
                window.late += 1;
            }
            if let Some(t) = &options.telemetry {
                t.dead_letters
                    .get_or_create(&CategoryLabel {
                        category: letter.0.category.clone(),
                    })
                    .inc();
                if letter.0.error == LATE {
                    t.late_events.inc();
                }
            }
            dlq.send(&letter.0, letter.1.as_deref())
                .await
                .map_err(kafka_err)?;
            window.dead_letters += 1;
        }
        branches
            .metrics
            .advance(&batch.at_end, Instant::now())
            .await?;
        if let Some(t) = &options.telemetry {
            report_progress(t, &source.lag(), branches.metrics.watermark_micros());
        }

        let due = window.opened.elapsed() >= pipeline.commit.interval
            || branches.events.buffered_rows() >= pipeline.commit.max_rows as u64
            || (caught_up && options.until_caught_up);
        if (progress.progressed() || branches.metrics.emitted() > 0) && due {
            let Some(committed) = commit_and_record(
                &mut dlq,
                &mut branches,
                &mut progress,
                &source,
                &mut summary,
                options.telemetry.as_deref(),
                pipeline,
            )
            .await?
            else {
                summary.fenced += 1;
                let owned = progress.owned().clone();
                branches.hold(&mut progress, &owned).await?;
                source.rewind(owned, progress.resume());
                window = CommitWindow::new();
                continue;
            };
            let seconds = window.opened.elapsed().as_secs_f64().max(1e-3);
            let (open_windows, state_bytes, watermark) = branches.metrics.describe();
            if let Some(t) = &options.telemetry {
                let per_second = window.messages as f64 / seconds;
                t.update_health(|h| h.events_per_second = per_second);
            }
            tracing::info!(
                pipeline = %name,
                table = branches.events.label(),
                rows = committed.events.rows,
                files = committed.events.files,
                windows = committed.metrics.rows,
                dead_letters = window.dead_letters,
                late = window.late,
                open_windows,
                state_bytes,
                watermark = watermark.as_deref().unwrap_or("none"),
                partitions = ?progress.owned(),
                conflicts = committed.events.conflicts + committed.metrics.conflicts,
                lag = ?source.lag(),
                events_per_s = (window.messages as f64 / seconds).round(),
                commit_ms = committed.events.millis + committed.metrics.millis,
                "committed"
            );
            window = CommitWindow::new();
        }
        if caught_up && options.until_caught_up && !progress.progressed() {
            tracing::info!(pipeline = %name, "caught up");
            break;
        }
    }
    source.stop();
    if options.flush_open_windows {
        let rows = branches.metrics.flush().await?;
        tracing::info!(pipeline = %name, windows = rows, "flushed the open windows");
    }
    if progress.progressed() || branches.metrics.emitted() > 0 {
        let landed = commit_and_record(
            &mut dlq,
            &mut branches,
            &mut progress,
            &source,
            &mut summary,
            options.telemetry.as_deref(),
            pipeline,
        )
        .await?;
        match landed {
            Some(committed) => {
                tracing::info!(
                    pipeline = %name,
                    rows = committed.events.rows,
                    files = committed.events.files,
                    windows = committed.metrics.rows,
                    "final commit"
                );
            }
            None => {
                summary.fenced += 1;
                let dropped = branches.drop_buffered().await;
                tracing::info!(pipeline = %name, dropped_rows = dropped, "final commit fenced: another runner holds these partitions now");
            }
        }
    }
    summary.dead_letters = dlq.counts().clone();
    summary.offsets = branches.events.offsets().clone();
    Ok(summary)
}

/// Looks up where assigned partitions resume, from the tables as they stand at the assignment
/// (called on the source's thread, inside the consumer's rebalance).
fn resume_lookup(pipeline: &PipelineConfig, catalog: Arc<dyn iceberg::Catalog>) -> ResumeLookup {
    let handle = tokio::runtime::Handle::current();
    let sink = pipeline.sink.clone();
    let (name, topic) = (pipeline.name.clone(), pipeline.source.topic.clone());
    Box::new(move |partitions: &[i32]| {
        handle.block_on(async {
            let load = |table: String| {
                let (catalog, sink, name) = (catalog.clone(), &sink, &name);
                async move { load_state(catalog.as_ref(), &sink.namespace, &table, name).await }
            };
            let events = load(sink.events_table.name.clone()).await?;
            let metrics = load(sink.metrics_table.name.clone()).await?;
            let mut resume = Offsets::new();
            for partition in partitions {
                if let Some(next) =
                    resume_point(&events.offsets, &metrics.offsets, &topic, *partition)
                {
                    resume.set(&topic, *partition, next);
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(resume)
        })
    })
}

/// Commits both tables and, when the commit lands, records it: the group offsets (for lag
/// monitoring), the run summary and the telemetry. `None` when the commit was fenced.
async fn commit_and_record(
    dlq: &mut DeadLetterWriter,
    branches: &mut Branches<'_>,
    progress: &mut Progress,
    source: &KafkaSource,
    summary: &mut RunSummary,
    telemetry: Option<&Telemetry>,
    pipeline: &PipelineConfig,
) -> Result<Option<Committed>, PipelineError> {
    let Some(committed) = commit(dlq, branches, progress, &pipeline.name).await? else {
        return Ok(None);
    };
    source.commit_group_offsets(&progress.resume());
    summary.add(&committed);
    if let Some(t) = telemetry {
        let counts = (summary.messages, dlq.counts());
        report_commit(
            t,
            pipeline,
            &committed,
            &source.lag(),
            branches.metrics,
            counts,
        );
    }
    Ok(Some(committed))
}

/// The two tables' branches.
struct Branches<'a> {
    events: &'a mut EventsBranch,
    metrics: &'a mut MetricsBranch,
}

impl Branches<'_> {
    /// Drops everything read and not committed: rows, closed windows and window state.
    async fn drop_buffered(&mut self) -> u64 {
        self.events.discard().await + self.metrics.discard().await
    }

    /// Takes over `partitions` from the tables as they stand now: what was buffered is dropped,
    /// window state restored from the checkpoints, offsets set in `progress`.
    async fn hold(
        &mut self,
        progress: &mut Progress,
        partitions: &BTreeSet<i32>,
    ) -> Result<(), PipelineError> {
        self.drop_buffered().await;
        let events = self.events.refresh().await?;
        let metrics = self.metrics.hold(partitions).await?;
        progress.hold(partitions, &events, &metrics);
        Ok(())
    }
}

/// Counters, gauges and health after a commit of both tables; `counts` are the messages
/// consumed and the dead letters sent so far.
fn report_commit(
    telemetry: &Telemetry,
    pipeline: &PipelineConfig,
    committed: &Committed,
    lag: &BTreeMap<i32, i64>,
    metrics: &MetricsBranch,
    counts: (u64, &BTreeMap<String, u64>),
) {
    for (table, rows) in [
        (&pipeline.sink.events_table.name, committed.events.rows),
        (&pipeline.sink.metrics_table.name, committed.metrics.rows),
    ] {
        telemetry
            .rows_written
            .get_or_create(&TableLabel {
                table: table.clone(),
            })
            .inc_by(rows);
    }
    let millis = committed.events.millis + committed.metrics.millis;
    telemetry.commit_seconds.observe(millis as f64 / 1000.0);
    report_progress(telemetry, lag, metrics.watermark_micros());
    let now = chrono::Utc::now();
    telemetry
        .last_commit
        .set(now.timestamp_millis() as f64 / 1000.0);
    let (messages, dead_letters) = (counts.0, counts.1.clone());
    let watermark = metrics.describe().2;
    telemetry.update_health(|h| {
        h.last_commit = Some(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        h.messages = messages;
        h.dead_letters = dead_letters;
        h.watermark = watermark;
    });
}

/// Lag and watermark delay, refreshed with every micro-batch (also when idle).
fn report_progress(telemetry: &Telemetry, lag: &BTreeMap<i32, i64>, watermark: Option<i64>) {
    for (partition, behind) in lag {
        telemetry
            .consumer_lag
            .get_or_create(&PartitionLabel {
                partition: partition.to_string(),
            })
            .set(*behind);
    }
    telemetry.set_watermark(watermark);
    let lag = lag.clone();
    telemetry.update_health(|h| h.lag = lag);
}

/// What one commit of both tables wrote.
struct Committed {
    events: CommitStats,
    metrics: CommitStats,
}

impl RunSummary {
    fn add(&mut self, committed: &Committed) {
        self.commits += 1;
        self.commit_conflicts +=
            u64::from(committed.events.conflicts + committed.metrics.conflicts);
        self.rows += committed.events.rows;
        self.windows += committed.metrics.rows;
    }
}

/// Commits both tables: dead letters first (the commits move past their offsets, so they must
/// be safe), then the events, then the windows with their state checkpoints. `None` when
/// another runner had moved partitions on: the caller drops what it holds and reads again.
async fn commit(
    dlq: &mut DeadLetterWriter,
    branches: &mut Branches<'_>,
    progress: &mut Progress,
    pipeline: &str,
) -> Result<Option<Committed>, PipelineError> {
    dlq.flush().await.map_err(|source| PipelineError::Kafka {
        pipeline: pipeline.to_string(),
        source,
    })?;
    let fenced = |table: &str, fenced: Fenced| {
        tracing::warn!(pipeline, table, "commit refused, {fenced}: dropping what this runner read of its partitions and reading them again from the tables");
        None
    };
    let events = match branches.events.commit(progress).await? {
        Landing::Committed(stats) => stats,
        Landing::Fenced(f) => return Ok(fenced(branches.events.label(), f)),
    };
    let metrics = match branches.metrics.commit(progress).await? {
        Landing::Committed(stats) => stats,
        Landing::Fenced(f) => return Ok(fenced(branches.metrics.label(), f)),
    };
    Ok(Some(Committed { events, metrics }))
}

/// Counters since the last commit.
struct CommitWindow {
    opened: Instant,
    messages: u64,
    dead_letters: u64,
    late: u64,
}

impl CommitWindow {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            messages: 0,
            dead_letters: 0,
            late: 0,
        }
    }
}

/// The per-batch work before the windows: parsing and routing rows.
struct Stages<'a> {
    parse: &'a SqlStage,
    parse_file: &'a str,
    pipeline: &'a str,
    /// How far from the clock an event time may be.
    bounds: EventTimeBounds,
    /// The window's event-time column.
    time_column: &'a str,
}

impl Stages<'_> {
    /// Parses one micro-batch: valid rows go to the events table (those it does not hold yet)
    /// and to the window; rejected rows, rows stamped too far ahead of the clock, and late and
    /// untimed rows become dead letters.
    async fn process(
        &self,
        batch: &MicroBatch,
        progress: &Progress,
        branches: &mut Branches<'_>,
    ) -> Result<Vec<KeyedDeadLetter>, PipelineError> {
        let events_skip = &progress.absorbed_ahead(TableRole::Events);
        let metrics_skip = &progress.absorbed_ahead(TableRole::Metrics);
        let pipeline = self.pipeline;
        let failed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut letters: Vec<KeyedDeadLetter> = batch
            .not_utf8
            .iter()
            .filter(|raw| {
                events_skip
                    .get(&raw.topic, raw.partition)
                    .is_none_or(|next| raw.offset >= next)
            })
            .map(|raw| dead_letter(raw, &raw.payload, INVALID_UTF8, pipeline, &failed_at))
            .collect();
        if batch.records.num_rows() == 0 {
            tag_replays(&mut letters, batch);
            return Ok(letters);
        }
        let exec_err = |source| PipelineError::Execution {
            pipeline: pipeline.to_string(),
            file: self.parse_file.to_string(),
            at: describe_batch(batch),
            source,
        };
        let outputs = self
            .parse
            .run(vec![batch.records.clone()])
            .await
            .map_err(exec_err)?;
        let now = Instant::now();
        let limits = self.bounds.now();
        for output in &outputs {
            let (valid, rejected) = split_rejected(output, ERROR_COLUMN).map_err(exec_err)?;
            let (valid, future) = limits
                .split_future(&valid, self.time_column)
                .map_err(|e| exec_err(e.into()))?;
            branches.events.take(&valid, events_skip).await?;
            for rejected in [rejected, future] {
                let rejected =
                    unabsorbed(&rejected, events_skip).map_err(|e| exec_err(e.into()))?;
                letters.extend(
                    from_rejected_rows(
                        &rejected,
                        Reason::FromSql,
                        &batch.records,
                        pipeline,
                        &failed_at,
                    )
                    .map_err(|e| exec_err(e.into()))?,
                );
            }
            let sorted = branches
                .metrics
                .take(&valid, metrics_skip, limits, now)
                .await?;
            for (rows, reason) in [(&sorted.late, LATE), (&sorted.untimed, UNTIMED)] {
                letters.extend(
                    from_rejected_rows(
                        rows,
                        Reason::Fixed(reason),
                        &batch.records,
                        pipeline,
                        &failed_at,
                    )
                    .map_err(|e| exec_err(e.into()))?,
                );
            }
        }
        tag_replays(&mut letters, batch);
        Ok(letters)
    }
}

/// The rows of parsed output at or past `absorbed` in their partition (the rest is already in
/// the table that `absorbed` belongs to). `absorbed` only lists partitions where a table is
/// ahead of the resume point, so in steady state it is empty and this costs nothing.
pub fn unabsorbed(
    rows: &RecordBatch,
    absorbed: &Offsets,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if rows.num_rows() == 0 || absorbed.is_empty() {
        return Ok(rows.clone());
    }
    let column = |name: &str, data_type: &DataType| {
        rows.column_by_name(name)
            .ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("parsed rows lack `{name}`"))
            })
            .and_then(|c| cast(c, data_type))
    };
    let topics = column("_topic", &DataType::Utf8)?;
    let topics = topics.as_string::<i32>();
    let partitions = column("_partition", &DataType::Int32)?;
    let partitions = partitions.as_primitive::<Int32Type>();
    let offsets = column("_offset", &DataType::Int64)?;
    let offsets = offsets.as_primitive::<Int64Type>();
    let keep: BooleanArray = (0..rows.num_rows())
        .map(|i| {
            Some(
                absorbed
                    .get(topics.value(i), partitions.value(i))
                    .is_none_or(|next| offsets.value(i) >= next),
            )
        })
        .collect();
    if keep.true_count() == rows.num_rows() {
        return Ok(rows.clone());
    }
    filter_record_batch(rows, &keep)
}

/// `topic partition p offsets a..b, ...` for error messages.
fn describe_batch(batch: &MicroBatch) -> String {
    batch
        .next_offsets
        .iter()
        .map(|(topic, partition, next)| format!("{topic}[{partition}] before offset {next}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A graceful-shutdown pair: trigger with `send(true)`.
pub fn shutdown_channel() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Marks dead letters of replayed messages with the coordinate they replay, so that the DLQ
/// tools can tell a replay that failed again.
fn tag_replays(letters: &mut [KeyedDeadLetter], batch: &MicroBatch) {
    if batch.replayed.is_empty() {
        return;
    }
    for (letter, _) in letters {
        let at = (letter.source.partition, letter.source.offset);
        letter.replay_of = batch.replayed.get(&at).cloned();
    }
}
