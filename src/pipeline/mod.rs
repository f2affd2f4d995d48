//! Wires source → parsing SQL → events table, → window → metrics table, and the dead letter
//! queue, and owns the commit loop.

pub mod events;
pub mod memory;
pub mod metrics;
pub mod outage;
pub mod plan;
pub mod progress;
pub mod rejects;
pub mod sample;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;

use tokio::sync::watch;

use crate::catalog::{check_warehouse, open_catalog};
use crate::common::error::Causes;
use crate::common::records::Coordinates;
use crate::common::summary::OffsetJump;
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
use outage::Outage;
use plan::plan_pipeline;
use progress::{resume_point, Progress, TableRole};
use rejects::{dead_letter, from_rejected_rows, Rejected, Rejection};

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
    /// `run --until-caught-up`: partitions this runner does not hold stayed behind their end
    /// in the tables, with no progress, for too long (no live runner reads them).
    #[error("pipeline {pipeline}: this runner's partitions of {topic} are in the tables, but {behind} made no progress for {waited:?} (the consumer group has {members} member(s)); the run is not caught up")]
    PartitionsBehind {
        pipeline: String,
        topic: String,
        /// Each partition with the tables' offset and its end.
        behind: String,
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

impl PipelineError {
    /// Whether the object store or the catalog failed in a way that may pass (see
    /// [`SinkError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, PipelineError::Sink { source, .. } if source.is_transient())
    }
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
    /// Read on past offsets the topic no longer holds instead of stopping.
    pub accept_offset_jumps: bool,
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
    /// How long each commit of both tables took, in commit order.
    pub commit_times: Vec<Duration>,
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
    check_warehouse(config, &pipeline.sink)
        .await
        .map_err(|e| sink_err(e.into()))?;
    let events = EventsBranch::open(pipeline, catalog.clone(), &planned.parse_output).await?;
    let metrics = MetricsBranch::open(config, pipeline, &ctx, &planned, catalog.clone()).await?;

    let client = client_config(&pipeline.source.brokers, &pipeline.source.properties);
    let admin = TopicAdmin::new(&client).map_err(kafka_err)?;
    let partitions_of = |topic: &String| {
        admin
            .partition_count(topic)?
            .ok_or_else(|| KafkaError::Admin {
                topic: topic.clone(),
                message: "does not exist; run `campaign-pipeline setup` first".into(),
            })
    };
    let topic_partitions = partitions_of(&pipeline.source.topic).map_err(kafka_err)?;
    partitions_of(&pipeline.dead_letter.topic).map_err(kafka_err)?;
    let dlq = DeadLetterWriter::new(&client, &pipeline.dead_letter.topic).map_err(kafka_err)?;
    let topic = pipeline.source.topic.clone();
    let source = KafkaSource::start(
        &client,
        SourceOptions {
            topic: topic.clone(),
            group_id: pipeline.source.group_id.clone(),
            start_from: pipeline.source.start_from,
            max_rows: pipeline.batch.max_rows,
            max_wait: pipeline.batch.max_wait,
            accept_offset_jumps: options.accept_offset_jumps,
        },
        resume_lookup(pipeline, catalog.clone()),
    )
    .map_err(source_err)?;
    tracing::info!(pipeline = %name, bound = %memory::MemoryBound::of(pipeline), "peak memory bound of this configuration");

    let mut runner = Runner {
        pipeline,
        options: &options,
        stages: Stages {
            parse: &parse,
            parse_file: &parse_file,
            pipeline: &name,
            bounds: EventTimeBounds::new(pipeline.window.max_future, pipeline.window.max_past),
            time_column: &planned.window.time_column,
        },
        branches: Branches { events, metrics },
        source,
        dlq,
        progress: Progress::new(&topic),
        summary: RunSummary::default(),
        window: CommitWindow::new(),
        assigned: BTreeSet::new(),
        unassigned_since: Some(Instant::now()),
        topic_partitions,
        caught_up_since: None,
        outage: None,
        catalog: catalog.clone(),
        client: client.clone(),
        waiting: None,
    };
    let mut shutdown = options.shutdown.clone();
    loop {
        loop {
            let event = tokio::select! {
                event = runner.source.next() => event,
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let Some(event) = event else { break };
            let step = match event.map_err(source_err)? {
                SourceEvent::Revoked => {
                    runner.revoked().await;
                    continue;
                }
                SourceEvent::Assigned { partitions } => runner.assigned(partitions).await,
                SourceEvent::Jumped { partition, jump } => {
                    runner.jumped(partition, jump);
                    continue;
                }
                SourceEvent::Batch(batch) => runner.batch(batch).await,
            };
            match step {
                Ok(Flow::Next) => {}
                Ok(Flow::Stop) => break,
                Err(error) => runner.ride_out(error).await?,
            }
        }
        match runner.finish().await {
            Ok(()) => break,
            // Caught up but the last commit failed: read the uncommitted part again.
            Err(error) if options.until_caught_up && !*options.shutdown.borrow() => {
                runner.ride_out(error).await?;
            }
            Err(error) => return Err(error),
        }
    }
    runner.source.stop();
    let mut summary = runner.summary;
    summary.dead_letters = runner.dlq.counts().clone();
    summary.offsets = runner.branches.events.offsets().clone();
    Ok(summary)
}

/// How long a runner that holds only some of the partitions stays caught up before it looks
/// at the others (`--until-caught-up`), and how often it looks again while they are behind.
/// Another runner leaving the group moves partitions around, and the move reaches each member
/// at its next heartbeat (every second). It stops only once the tables hold every partition of
/// the topic up to its end: stopping when its own were done once left partitions unread by
/// anyone while every runner reported success.
const SETTLE: Duration = Duration::from_secs(3);

/// How long the end-of-partition probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A partition of the topic the tables do not hold up to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Behind {
    partition: i32,
    /// Where the tables resume it (none: never read).
    tables: Option<i64>,
    /// Where it ends (none: the probe could not tell).
    end: Option<i64>,
}

/// `partition 0 (tables at 120 of 300), ...` for logs and errors.
fn describe_behind(behind: &[Behind]) -> String {
    let offset = |o: Option<i64>| o.map_or_else(|| "?".to_string(), |o| o.to_string());
    behind
        .iter()
        .map(|b| {
            format!(
                "partition {} (tables at {} of {})",
                b.partition,
                b.tables
                    .map_or_else(|| "nothing".to_string(), |t| t.to_string()),
                offset(b.end)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the run loop does after a source event.
enum Flow {
    /// Read on.
    Next,
    /// Caught up (`--until-caught-up`): stop reading.
    Stop,
}

/// One run's moving parts: the source, the two branches, the dead letter writer and the
/// offsets, with what the run has done so far.
struct Runner<'a> {
    pipeline: &'a PipelineConfig,
    options: &'a RunOptions,
    stages: Stages<'a>,
    branches: Branches,
    source: KafkaSource,
    dlq: DeadLetterWriter,
    progress: Progress,
    summary: RunSummary,
    window: CommitWindow,
    /// The partitions the group gave this runner, as the source last reported them.
    assigned: BTreeSet<i32>,
    /// Since when the runner has held no partition.
    unassigned_since: Option<Instant>,
    /// Partitions of the source topic when the run started.
    topic_partitions: usize,
    /// Since when every held partition has been read to its end and committed, with nothing
    /// assigned or revoked since (`--until-caught-up`).
    caught_up_since: Option<Instant>,
    /// The object store or catalog failure being ridden out, until a commit lands again.
    outage: Option<Outage>,
    /// The catalog, to read where the tables stand for partitions other runners hold.
    catalog: Arc<dyn iceberg::Catalog>,
    /// The Kafka client settings, to probe where partitions end.
    client: rdkafka::ClientConfig,
    /// `--until-caught-up`: the partitions of other runners last seen behind, and since when
    /// they have not moved.
    waiting: Option<(Vec<Behind>, Instant)>,
}

impl Runner<'_> {
    fn name(&self) -> &str {
        &self.pipeline.name
    }

    /// The group took every partition away: what was not committed is dropped.
    async fn revoked(&mut self) {
        let dropped = self.branches.drop_buffered().await;
        self.progress
            .hold(&BTreeSet::new(), &Offsets::new(), &Offsets::new());
        self.assigned.clear();
        tracing::info!(pipeline = %self.name(), dropped_rows = dropped, "partitions revoked: dropped what was not committed");
        self.unassigned_since = Some(Instant::now());
        self.caught_up_since = None;
    }

    /// The group gave this runner `partitions`: they are taken over from the tables.
    async fn assigned(&mut self, partitions: BTreeSet<i32>) -> Result<Flow, PipelineError> {
        self.assigned = partitions;
        self.unassigned_since = self.assigned.is_empty().then(Instant::now);
        self.caught_up_since = None;
        self.take_over().await?;
        tracing::info!(pipeline = %self.name(), partitions = ?self.assigned, resume = %self.progress.resume().to_json(), "holding partitions");
        Ok(Flow::Next)
    }

    /// The source reads a held partition on where its offsets jumped: the tables' next commits
    /// record the partition there, and the jump in their snapshots.
    fn jumped(&mut self, partition: i32, jump: OffsetJump) {
        tracing::warn!(pipeline = %self.name(), topic = %self.pipeline.source.topic, partition, from = jump.from, to = jump.to, skipped = jump.skipped, "offsets jumped; the next commit of each table records it");
        self.progress.jumped(partition, jump);
        if let Some(telemetry) = &self.options.telemetry {
            let label = PartitionLabel {
                partition: partition.to_string(),
            };
            telemetry.offset_jumps.get_or_create(&label).inc();
            telemetry
                .offsets_skipped
                .get_or_create(&label)
                .inc_by(jump.skipped.max(0).unsigned_abs());
        }
    }

    /// Takes over the assigned partitions from the tables as they stand now and positions the
    /// source there.
    async fn take_over(&mut self) -> Result<(), PipelineError> {
        self.branches
            .hold(&mut self.progress, &self.assigned)
            .await?;
        // Position every held partition from this load, and leave out whatever the source
        // read before it: a rewind asked for before this may still be on its way to the
        // source, and must not drop batches read after it.
        self.source
            .rewind(self.assigned.clone(), self.progress.resume());
        self.dlq.settle(&self.progress.resume());
        self.window = CommitWindow::new();
        Ok(())
    }

    /// Runs one micro-batch through the stages, and commits when one is due.
    async fn batch(&mut self, batch: MicroBatch) -> Result<Flow, PipelineError> {
        let options = self.options;
        if let Some(since) = self.unassigned_since.filter(|_| options.until_caught_up) {
            if since.elapsed() > options.max_unassigned {
                return Err(PipelineError::Unassigned {
                    pipeline: self.name().to_string(),
                    topic: self.pipeline.source.topic.clone(),
                    waited: since.elapsed(),
                    members: self
                        .source
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
        self.window.messages += batch.message_count() as u64;
        self.summary.messages += batch.message_count() as u64;
        if let Some(t) = &options.telemetry {
            t.events_consumed.inc_by(batch.message_count() as u64);
        }
        let letters = self
            .stages
            .process(&batch, &self.progress, &mut self.branches)
            .await?;
        self.progress.handed_on(&batch.next_offsets);
        for Rejected {
            letter,
            key,
            rejection,
        } in letters
        {
            let sent = self
                .dlq
                .send(&letter, key.as_deref())
                .await
                .map_err(|source| PipelineError::Kafka {
                    pipeline: self.pipeline.name.clone(),
                    source,
                })?;
            if !sent {
                continue;
            }
            let late = rejection == Rejection::Late;
            self.window.dead_letters += 1;
            self.window.late += u64::from(late);
            if let Some(t) = &options.telemetry {
                t.dead_letters
                    .get_or_create(&CategoryLabel {
                        category: letter.category.clone(),
                    })
                    .inc();
                if late {
                    t.late_events.inc();
                }
            }
        }
        self.branches
            .metrics
            .advance(&batch.at_end, Instant::now())
            .await?;
        if let Some(t) = &options.telemetry {
            report_progress(
                t,
                &self.source.lag(),
                self.branches.metrics.watermark_micros(),
            );
        }

        let due = self.window.opened.elapsed() >= self.pipeline.commit.interval
            || self.branches.events.buffered_rows() >= self.pipeline.commit.max_rows as u64
            || (caught_up && options.until_caught_up);
        if self.pending() && due {
            let started = Instant::now();
            let Some(committed) = self.commit().await? else {
                self.summary.fenced += 1;
                self.take_over().await?;
                return Ok(Flow::Next);
            };
            self.log_commit(&committed);
            // The next commit is due an interval after this one started, not after it ended:
            // `commit.interval` is how often rows become queryable, whatever a commit takes.
            self.window = CommitWindow::since(started);
        }
        if caught_up && options.until_caught_up && !self.progress.progressed() {
            let since = *self.caught_up_since.get_or_insert_with(Instant::now);
            if self.assigned.len() >= self.topic_partitions {
                tracing::info!(pipeline = %self.name(), "caught up");
                return Ok(Flow::Stop);
            }
            if since.elapsed() >= SETTLE {
                // Done with its own partitions: the run is caught up only when the tables
                // hold every other partition up to its end too.
                let behind = self.others_behind().await?;
                if behind.is_empty() {
                    tracing::info!(pipeline = %self.name(), "caught up: the tables hold every partition of the topic up to its end");
                    return Ok(Flow::Stop);
                }
                let still = match self.waiting.take() {
                    Some((before, at)) if before == behind => at,
                    _ => Instant::now(),
                };
                if still.elapsed() > options.max_unassigned {
                    return Err(PipelineError::PartitionsBehind {
                        pipeline: self.name().to_string(),
                        topic: self.pipeline.source.topic.clone(),
                        behind: describe_behind(&behind),
                        waited: still.elapsed(),
                        members: self
                            .source
                            .group_members()
                            .map_or_else(|| "an unknown number of".into(), |n| n.to_string()),
                    });
                }
                tracing::info!(pipeline = %self.name(), behind = %describe_behind(&behind), "own partitions caught up; waiting for the runners that hold the others");
                self.waiting = Some((behind, still));
                self.caught_up_since = Some(Instant::now());
            }
        } else {
            self.caught_up_since = None;
        }
        Ok(Flow::Next)
    }

    /// The partitions of the topic this runner does not hold whose events the tables do not
    /// hold up to the partition's end (a partition whose end could not be read counts).
    async fn others_behind(&self) -> Result<Vec<Behind>, PipelineError> {
        let sink = &self.pipeline.sink;
        let load = |table: &str| {
            let catalog = self.catalog.clone();
            let (namespace, table, name) = (
                sink.namespace.clone(),
                table.to_string(),
                self.pipeline.name.clone(),
            );
            async move { load_state(catalog.as_ref(), &namespace, &table, &name).await }
        };
        let sink_err = |source| PipelineError::Sink {
            pipeline: self.pipeline.name.clone(),
            source,
        };
        let events = load(&sink.events_table.name).await.map_err(sink_err)?;
        let metrics = load(&sink.metrics_table.name).await.map_err(sink_err)?;
        let topic = self.pipeline.source.topic.clone();
        let from: BTreeMap<i32, Option<i64>> = (0..self.topic_partitions as i32)
            .filter(|p| !self.assigned.contains(p))
            .map(|p| {
                (
                    p,
                    resume_point(&events.offsets, &metrics.offsets, &topic, p),
                )
            })
            // A partition the tables never read starts at its end with `start_from: latest`.
            .filter(|(_, tables)| {
                tables.is_some()
                    || self.pipeline.source.start_from == crate::config::StartFrom::Earliest
            })
            .collect();
        if from.is_empty() {
            return Ok(Vec::new());
        }
        let (client, group) = (
            self.client.clone(),
            format!("{}.ends", self.pipeline.source.group_id),
        );
        let probe = from.clone();
        let probe_topic = topic.clone();
        let ends = tokio::task::spawn_blocking(move || {
            crate::kafka::ends::partition_ends(&client, &group, &probe_topic, &probe, PROBE_TIMEOUT)
        })
        .await
        .map_err(|e| PipelineError::Kafka {
            pipeline: self.pipeline.name.clone(),
            source: KafkaError::Admin {
                topic: topic.clone(),
                message: format!("probing where partitions end: {e}"),
            },
        })?
        .map_err(|source| PipelineError::Kafka {
            pipeline: self.pipeline.name.clone(),
            source,
        })?;
        Ok(from
            .into_iter()
            .filter_map(|(partition, tables)| {
                let marks = ends.get(&partition);
                // Never read: done when the partition holds nothing (retention may have
                // emptied it, so its start counts, not offset 0).
                let done = marks.is_some_and(|m| m.high <= tables.unwrap_or(m.low.max(0)));
                (!done).then_some(Behind {
                    partition,
                    tables,
                    end: marks.map(|m| m.high),
                })
            })
            .collect())
    }

    /// Whether anything read or emitted waits for a commit.
    fn pending(&self) -> bool {
        self.progress.progressed() || self.branches.metrics.emitted() > 0
    }

    /// At the end of reading: flushes the open windows when asked, and commits what is left.
    async fn finish(&mut self) -> Result<(), PipelineError> {
        if self.options.flush_open_windows {
            let rows = self.branches.metrics.flush().await?;
            tracing::info!(pipeline = %self.name(), windows = rows, "flushed the open windows");
        }
        if !self.pending() {
            return Ok(());
        }
        match self.commit().await? {
            Some(committed) => {
                tracing::info!(
                    pipeline = %self.name(),
                    rows = committed.events.rows,
                    files = committed.events.files,
                    windows = committed.metrics.rows,
                    "final commit"
                );
            }
            None => {
                self.summary.fenced += 1;
                let dropped = self.branches.drop_buffered().await;
                tracing::info!(pipeline = %self.name(), dropped_rows = dropped, "final commit fenced: another runner holds these partitions now");
            }
        }
        Ok(())
    }

    /// Commits both tables: dead letters first (the commits move past their offsets, so they
    /// must be safe), then the events, then the windows with their state checkpoints. When
    /// the commit lands it is recorded: the group offsets (for lag monitoring), the run summary
    /// and the telemetry. `None` when another runner had moved partitions on: the caller drops
    /// what it holds and reads again.
    async fn commit(&mut self) -> Result<Option<Committed>, PipelineError> {
        let pipeline = self.pipeline;
        self.dlq
            .flush()
            .await
            .map_err(|source| PipelineError::Kafka {
                pipeline: pipeline.name.clone(),
                source,
            })?;
        let fenced = |table: &str, fenced: Fenced| {
            tracing::warn!(pipeline = %pipeline.name, table, "commit refused, {fenced}: dropping what this runner read of its partitions and reading them again from the tables");
            None
        };
        let events = match self.branches.events.commit(&mut self.progress).await? {
            Landing::Committed(stats) => stats,
            Landing::Fenced(f) => return Ok(fenced(self.branches.events.label(), f)),
        };
        let metrics = match self.branches.metrics.commit(&mut self.progress).await? {
            Landing::Committed(stats) => stats,
            Landing::Fenced(f) => return Ok(fenced(self.branches.metrics.label(), f)),
        };
        let committed = Committed { events, metrics };
        let resume = self.progress.resume();
        self.source.commit_group_offsets(&resume);
        self.dlq.settle(&resume);
        self.summary.add(&committed);
        if let Some(outage) = self.outage.take() {
            tracing::info!(pipeline = %pipeline.name, "committed again after {:.1} s of failures ({} attempt(s))", outage.since.elapsed().as_secs_f64(), outage.attempts());
        }
        if let Some(t) = self.options.telemetry.as_deref() {
            let counts = (self.summary.messages, self.dlq.counts());
            report_commit(
                t,
                pipeline,
                &committed,
                &self.source.lag(),
                &self.branches.metrics,
                counts,
            );
        }
        Ok(Some(committed))
    }

    /// The commit log line.
    fn log_commit(&self, committed: &Committed) {
        let window = &self.window;
        let seconds = window.opened.elapsed().as_secs_f64().max(1e-3);
        let state = self.branches.metrics.describe();
        if let Some(t) = &self.options.telemetry {
            let per_second = window.messages as f64 / seconds;
            t.update_health(|h| h.events_per_second = per_second);
        }
        tracing::info!(
            pipeline = %self.name(),
            table = self.branches.events.label(),
            rows = committed.events.rows,
            files = committed.events.files,
            windows = committed.metrics.rows,
            dead_letters = window.dead_letters,
            late = window.late,
            open_windows = state.open_windows,
            state_bytes = state.state_bytes,
            watermark = state.watermark.as_deref().unwrap_or("none"),
            partitions = ?self.progress.owned(),
            conflicts = committed.events.conflicts + committed.metrics.conflicts,
            lag = ?self.source.lag(),
            events_per_s = (window.messages as f64 / seconds).round(),
            commit_ms = committed.events.millis + committed.metrics.millis,
            "committed"
        );
    }

    /// After `error`: when the object store or the catalog failed, drops what was not
    /// committed and takes the partitions over from the tables again, retrying with backoff
    /// until they answer, for at most `commit.retry_for` from the first failure; then the
    /// source reads the dropped part again. Every other error (and one that outlasts the
    /// retries, or a shutdown while waiting) is returned.
    async fn ride_out(&mut self, error: PipelineError) -> Result<(), PipelineError> {
        if !error.is_transient() {
            return Err(error);
        }
        let limit = self.pipeline.commit.retry_for;
        // Kept across failures until a commit lands: a store that fails again right after
        // answering one load does not restart the schedule.
        let mut outage = self.outage.take().unwrap_or_else(|| Outage::begin(limit));
        let dropped = self.branches.abandon();
        tracing::warn!(pipeline = %self.pipeline.name, dropped_rows = dropped, "{}: dropped what was not committed; reading it again once the tables answer", Causes(&error));
        let mut shutdown = self.options.shutdown.clone();
        let mut last = error;
        loop {
            let Some(wait) = outage.next_wait() else {
                tracing::error!(pipeline = %self.pipeline.name, "the object store or catalog kept failing for {:?} (commit.retry_for): stopping", limit);
                return Err(last);
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Err(last),
            }
            // Nothing is held while the tables are loaded again: dead letters already sent
            // must be delivered before the source reads their messages again.
            self.dlq
                .flush()
                .await
                .map_err(|source| PipelineError::Kafka {
                    pipeline: self.pipeline.name.clone(),
                    source,
                })?;
            match self.take_over().await {
                Ok(()) => {
                    tracing::info!(pipeline = %self.pipeline.name, resume = %self.progress.resume().to_json(), "the tables answer again after {:.1} s: reading on from them", outage.since.elapsed().as_secs_f64());
                    self.outage = Some(outage);
                    return Ok(());
                }
                Err(error) if error.is_transient() => {
                    tracing::warn!(pipeline = %self.pipeline.name, "still failing after {:.1} s (attempt {}): {}", outage.since.elapsed().as_secs_f64(), outage.attempts(), Causes(&error));
                    last = error;
                }
                Err(error) => return Err(error),
            }
        }
    }
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

/// The two tables' branches.
struct Branches {
    events: EventsBranch,
    metrics: MetricsBranch,
}

impl Branches {
    /// Drops everything read and not committed: rows, closed windows and window state.
    async fn drop_buffered(&mut self) -> u64 {
        self.events.discard().await + self.metrics.discard().await
    }

    /// Drops the same without touching the object store, which just failed.
    fn abandon(&mut self) -> u64 {
        self.events.abandon() + self.metrics.abandon()
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
    let watermark = metrics.describe().watermark;
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
        let millis = committed.events.millis + committed.metrics.millis;
        self.commit_times
            .push(Duration::from_millis(millis.try_into().unwrap_or(u64::MAX)));
    }
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
        Self::since(Instant::now())
    }

    fn since(opened: Instant) -> Self {
        Self {
            opened,
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
        branches: &mut Branches,
    ) -> Result<Vec<Rejected>, PipelineError> {
        let events_skip = &progress.absorbed_ahead(TableRole::Events);
        let metrics_skip = &progress.absorbed_ahead(TableRole::Metrics);
        let pipeline = self.pipeline;
        let failed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut letters: Vec<Rejected> = batch
            .not_utf8
            .iter()
            .filter(|raw| {
                events_skip
                    .get(&raw.topic, raw.partition)
                    .is_none_or(|next| raw.offset >= next)
            })
            .map(|raw| {
                let rejection = Rejection::InvalidUtf8;
                let reason = rejection.fixed_reason().unwrap_or_default();
                dead_letter(raw, &raw.payload, rejection, reason, pipeline, &failed_at)
            })
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
                        Rejection::Error,
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
            for (rows, rejection) in [
                (&sorted.late, Rejection::Late),
                (&sorted.untimed, Rejection::Untimed),
            ] {
                letters.extend(
                    from_rejected_rows(rows, rejection, &batch.records, pipeline, &failed_at)
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
    let at = Coordinates::of(rows)?;
    let keep: BooleanArray = (0..rows.num_rows())
        .map(|i| {
            Some(
                absorbed
                    .get(at.topics.value(i), at.partitions.value(i))
                    .is_none_or(|next| at.offsets.value(i) >= next),
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
fn tag_replays(letters: &mut [Rejected], batch: &MicroBatch) {
    if batch.replayed.is_empty() {
        return;
    }
    for Rejected { letter, .. } in letters {
        let at = (letter.source.partition, letter.source.offset);
        letter.replay_of = batch.replayed.get(&at).cloned();
    }
}
