//! Wires source → parsing SQL → Iceberg sink and the dead letter queue, and owns the commit loop.

pub mod rejects;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio::sync::watch;

use crate::common::{Offsets, ERROR_COLUMN};
use crate::config::{Config, PipelineConfig};
use crate::dlq::DeadLetterWriter;
use crate::engine::{new_session, plan_pipeline, split_rejected, SqlProblem, SqlStage};
use crate::kafka::admin::TopicAdmin;
use crate::kafka::{client_config, KafkaError};
use crate::sink::catalog::open_catalog;
use crate::sink::iceberg::TableWriter;
use crate::sink::SinkError;
use crate::source::{KafkaSource, MicroBatch, SourceError, SourceOptions};
use rejects::{dead_letter, from_rejected_rows, KeyedDeadLetter, INVALID_UTF8};

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
    /// Becomes `true` when the run must finish the batch in hand, commit and stop.
    pub shutdown: watch::Receiver<bool>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Messages consumed.
    pub messages: u64,
    /// Rows committed to the events table.
    pub rows: u64,
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
    let mut absorbed = events.committed_offsets().map_err(sink_err)?;
    tracing::info!(pipeline = %name, table = events.label(), offsets = %absorbed.to_json(), "resuming");

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
        for (topic, partition, next) in batch.next_offsets.iter() {
            pending.advance(topic, partition, next);
            touched.insert((topic.to_string(), partition));
        }
        for letter in process(&batch, &parse, &mut events, &parse_file, &name).await? {
            dlq.send(&letter.0, letter.1.as_deref())
                .await
                .map_err(kafka_err)?;
            window.dead_letters += 1;
        }

        let progressed = pending != absorbed;
        let due = window.opened.elapsed() >= pipeline.commit.interval
            || events.buffered_rows() >= pipeline.commit.max_rows as u64
            || (caught_up && options.until_caught_up);
        if progressed && due {
            // Dead letters first: the commit moves past their offsets, so they must be safe.
            dlq.flush().await.map_err(kafka_err)?;
            let assigned = source.assigned();
            let mut offsets = Offsets::new();
            for (topic, partition, next) in pending.iter() {
                if assigned.contains(&partition)
                    || touched.contains(&(topic.to_string(), partition))
                {
                    offsets.set(topic, partition, next);
                }
            }
            let stats = events.commit(&offsets).await.map_err(sink_err)?;
            absorbed.advance_all(&offsets);
            source.absorbed(&offsets);
            touched.clear();
            summary.commits += 1;
            summary.rows += stats.rows;
            let seconds = window.opened.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                pipeline = %name,
                table = events.label(),
                rows = stats.rows,
                files = stats.files,
                dead_letters = window.dead_letters,
                lag = ?source.lag(),
                events_per_s = (window.messages as f64 / seconds).round(),
                commit_ms = stats.millis,
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
    if pending != absorbed {
        dlq.flush().await.map_err(kafka_err)?;
        let stats = events.commit(&pending).await.map_err(sink_err)?;
        absorbed.advance_all(&pending);
        source.absorbed(&pending);
        summary.commits += 1;
        summary.rows += stats.rows;
        tracing::info!(pipeline = %name, rows = stats.rows, files = stats.files, "final commit");
    }
    summary.dead_letters = dlq.counts().clone();
    summary.offsets = absorbed;
    Ok(summary)
}

/// Counters since the last commit.
struct CommitWindow {
    opened: Instant,
    messages: u64,
    dead_letters: u64,
}

impl CommitWindow {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            messages: 0,
            dead_letters: 0,
        }
    }
}

/// Parses one micro-batch: valid rows go to the events table, the rest become dead letters.
async fn process(
    batch: &MicroBatch,
    parse: &SqlStage,
    events: &mut TableWriter,
    parse_file: &str,
    pipeline: &str,
) -> Result<Vec<KeyedDeadLetter>, PipelineError> {
    let failed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut letters: Vec<KeyedDeadLetter> = batch
        .not_utf8
        .iter()
        .map(|raw| dead_letter(raw, &raw.payload, INVALID_UTF8, pipeline, &failed_at))
        .collect();
    if batch.records.num_rows() == 0 {
        return Ok(letters);
    }
    let exec_err = |source| PipelineError::Execution {
        pipeline: pipeline.to_string(),
        file: parse_file.to_string(),
        at: describe_batch(batch),
        source,
    };
    let outputs = parse
        .run(vec![batch.records.clone()])
        .await
        .map_err(exec_err)?;
    for output in &outputs {
        let (valid, rejected) = split_rejected(output, ERROR_COLUMN).map_err(exec_err)?;
        events
            .write(&valid)
            .await
            .map_err(|source| PipelineError::Sink {
                pipeline: pipeline.to_string(),
                source,
            })?;
        letters.extend(
            from_rejected_rows(&rejected, &batch.records, pipeline, &failed_at)
                .map_err(|e| exec_err(e.into()))?,
        );
    }
    Ok(letters)
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
