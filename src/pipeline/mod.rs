//! Wires source → parsing SQL → events table, → window → metrics table, and the dead letter
//! queue, and owns the commit loop.

pub mod metrics;
pub mod rejects;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int32Type, Int64Type};

use tokio::sync::watch;

use crate::common::{Offsets, ERROR_COLUMN};
use crate::config::{Config, PipelineConfig};
use crate::dlq::DeadLetterWriter;
use crate::engine::{new_session, plan_pipeline, split_rejected, SqlProblem, SqlStage};
use crate::kafka::admin::TopicAdmin;
use crate::kafka::{client_config, KafkaError};
use crate::sink::catalog::open_catalog;
use crate::sink::iceberg::{CommitStats, TableWriter};
use crate::sink::SinkError;
use crate::source::{KafkaSource, MicroBatch, SourceError, SourceOptions};
use crate::telemetry::{CategoryLabel, PartitionLabel, TableLabel, Telemetry};
use crate::window::WindowError;
use metrics::MetricsBranch;
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
    #[error("pipeline {pipeline}: {source}")]
    Sink { pipeline: String, source: SinkError },
    /// Kafka failed (dead letter delivery, clients).
    #[error("pipeline {pipeline}: {source}")]
    Kafka {
        pipeline: String,
        source: KafkaError,
    },
    /// The source failed.
    #[error("pipeline {pipeline}: {source}")]
    Source {
        pipeline: String,
        source: SourceError,
    },
    /// The window stage failed.
    #[error("pipeline {pipeline}: {source}")]
    Window {
        pipeline: String,
        source: WindowError,
    },
    /// Running the SQL on a micro-batch failed.
    #[error("pipeline {pipeline}: running {file} on the batch at {at}: {source}")]
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
    /// Offsets the events table holds at the end.
    pub offsets: Offsets,
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
    let catalog = open_catalog(config, &pipeline.sink.catalog)
        .await
        .map_err(sink_err)?;
    let sink = &pipeline.sink;
    let mut events = TableWriter::open(
        catalog.clone(),
        &sink.namespace,
        &sink.events_table.name,
        &name,
        &planned.parse_output,
    )
    .await
    .map_err(sink_err)?;
    let events_absorbed = events.committed_offsets().clone();
    let mut metrics =
        MetricsBranch::open(config, pipeline, &ctx, &planned, catalog.clone()).await?;
    // The two tables commit one after the other, so a crash can leave the metrics table behind:
    // resume where the one furthest behind stands, and let each drop what it already holds.
    let mut absorbed = resume_point(&events_absorbed, metrics.absorbed());
    metrics.resume_at(&absorbed);
    // Rows the events table already holds that the source will hand on again.
    let mut events_skip = events_absorbed.ahead_of(&absorbed);
    tracing::info!(pipeline = %name, table = events.label(), offsets = %events_absorbed.to_json(), "resuming");

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
    let mut source = KafkaSource::start(
        &client,
        SourceOptions {
            topic: pipeline.source.topic.clone(),
            group_id: pipeline.source.group_id.clone(),
            start_from: pipeline.source.start_from,
            max_rows: pipeline.batch.max_rows,
            max_wait: pipeline.batch.max_wait,
        },
        absorbed.clone(),
    )
    .map_err(|source| PipelineError::Source {
        pipeline: name.clone(),
        source,
    })?;

    let mut summary = RunSummary::default();
    let mut pending = absorbed.clone();
    let mut touched: BTreeSet<(String, i32)> = BTreeSet::new();
    let mut window = CommitWindow::new();
    let mut shutdown = options.shutdown.clone();
    let stages = Stages {
        parse: &parse,
        parse_file: &parse_file,
        pipeline: &name,
    };
    loop {
        let batch = tokio::select! {
            batch = source.next() => batch,
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let Some(batch) = batch else { break };
        let batch = batch.map_err(|source| PipelineError::Source {
            pipeline: name.clone(),
            source,
        })?;
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
        for (topic, partition, next) in batch.next_offsets.iter() {
            pending.advance(topic, partition, next);
            touched.insert((topic.to_string(), partition));
        }
        let letters = stages
            .process(&batch, &mut events, &events_skip, &mut metrics)
            .await?;
        events_skip.drop_reached(&pending);
        metrics.progressed(&pending);
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
        let assigned = source.assigned();
        metrics
            .advance(&assigned, &batch.at_end, Instant::now())
            .await?;
        if let Some(t) = &options.telemetry {
            report_progress(t, &source.lag(), metrics.watermark_micros());
        }

        let progressed = pending != absorbed;
        let due = window.opened.elapsed() >= pipeline.commit.interval
            || events.buffered_rows() >= pipeline.commit.max_rows as u64
            || (caught_up && options.until_caught_up);
        if progressed && due {
            let mut offsets = Offsets::new();
            for (topic, partition, next) in pending.iter() {
                if assigned.contains(&partition)
                    || touched.contains(&(topic.to_string(), partition))
                {
                    offsets.set(topic, partition, next);
                }
            }
            let committed = commit(&mut dlq, &mut events, &mut metrics, &offsets, &name).await?;
            absorbed.advance_all(&offsets);
            source.absorbed(&offsets);
            touched.clear();
            summary.add(&committed);
            let seconds = window.opened.elapsed().as_secs_f64().max(1e-3);
            let (open_windows, state_bytes, watermark) = metrics.describe();
            if let Some(t) = &options.telemetry {
                let counts = (summary.messages, dlq.counts());
                report_commit(t, pipeline, &committed, &source.lag(), &metrics, counts);
                let per_second = window.messages as f64 / seconds;
                t.update_health(|h| h.events_per_second = per_second);
            }
            tracing::info!(
                pipeline = %name,
                table = events.label(),
                rows = committed.events.rows,
                files = committed.events.files,
                windows = committed.metrics.rows,
                dead_letters = window.dead_letters,
                late = window.late,
                open_windows,
                state_bytes,
                watermark = watermark.as_deref().unwrap_or("none"),
                lag = ?source.lag(),
                events_per_s = (window.messages as f64 / seconds).round(),
                commit_ms = committed.events.millis + committed.metrics.millis,
                "committed"
            );
            window = CommitWindow::new();
        }
        if caught_up && options.until_caught_up && pending == absorbed {
            tracing::info!(pipeline = %name, "caught up");
            break;
        }
    }
    source.stop();
    if options.flush_open_windows {
        let rows = metrics.flush().await?;
        tracing::info!(pipeline = %name, windows = rows, "flushed the open windows");
    }
    if pending != absorbed || metrics.emitted() > 0 {
        let committed = commit(&mut dlq, &mut events, &mut metrics, &pending, &name).await?;
        absorbed.advance_all(&pending);
        source.absorbed(&pending);
        summary.add(&committed);
        if let Some(t) = &options.telemetry {
            let counts = (summary.messages, dlq.counts());
            report_commit(t, pipeline, &committed, &source.lag(), &metrics, counts);
        }
        tracing::info!(
            pipeline = %name,
            rows = committed.events.rows,
            files = committed.events.files,
            windows = committed.metrics.rows,
            "final commit"
        );
    }
    summary.dead_letters = dlq.counts().clone();
    summary.offsets = absorbed;
    Ok(summary)
}

/// Per partition, the lower of the two tables' offsets (a partition only one table knows is
/// left out, so it starts from `start_from` and the other table drops what it holds).
fn resume_point(events: &Offsets, metrics: &Offsets) -> Offsets {
    let mut resume = Offsets::new();
    for (topic, partition, next) in events.iter() {
        if let Some(other) = metrics.get(topic, partition) {
            resume.set(topic, partition, next.min(other));
        }
    }
    resume
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
    if let Some(micros) = watermark {
        let now = chrono::Utc::now().timestamp_micros();
        telemetry.watermark_delay.set((now - micros) as f64 / 1e6);
    }
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
        self.rows += committed.events.rows;
        self.windows += committed.metrics.rows;
    }
}

/// Commits both tables at `offsets`: dead letters first (the commits move past their offsets, so
/// they must be safe), then the events, then the windows with their state checkpoint.
async fn commit(
    dlq: &mut DeadLetterWriter,
    events: &mut TableWriter,
    metrics: &mut MetricsBranch,
    offsets: &Offsets,
    pipeline: &str,
) -> Result<Committed, PipelineError> {
    dlq.flush().await.map_err(|source| PipelineError::Kafka {
        pipeline: pipeline.to_string(),
        source,
    })?;
    let events = events
        .commit(offsets)
        .await
        .map_err(|source| PipelineError::Sink {
            pipeline: pipeline.to_string(),
            source,
        })?;
    let metrics = metrics.commit(offsets).await?;
    Ok(Committed { events, metrics })
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
}

impl Stages<'_> {
    /// Parses one micro-batch: valid rows go to the events table (those it does not hold yet)
    /// and to the window; rejected, late and untimed rows become dead letters.
    async fn process(
        &self,
        batch: &MicroBatch,
        events: &mut TableWriter,
        events_skip: &Offsets,
        metrics: &mut MetricsBranch,
    ) -> Result<Vec<KeyedDeadLetter>, PipelineError> {
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
        for output in &outputs {
            let (valid, rejected) = split_rejected(output, ERROR_COLUMN).map_err(exec_err)?;
            let new_valid = unabsorbed(&valid, events_skip).map_err(|e| exec_err(e.into()))?;
            events
                .write(&new_valid)
                .await
                .map_err(|source| PipelineError::Sink {
                    pipeline: pipeline.to_string(),
                    source,
                })?;
            let rejected = unabsorbed(&rejected, events_skip).map_err(|e| exec_err(e.into()))?;
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
            let sorted = metrics.take(&valid, now).await?;
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
