//! Wires source → parsing SQL → events table, → window → metrics table, and the dead letter
//! queue, and owns the commit loop.

pub mod events;
pub mod handover;
pub mod memory;
pub mod metrics;
pub mod outage;
pub mod plan;
pub mod progress;
pub mod rejects;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, is_null, not};

use tokio::sync::watch;

use crate::common::clock::wall_text;
use crate::common::error::Causes;
use crate::common::records::{Coordinates, KafkaRecords};
use crate::common::summary::OffsetJump;
use crate::common::{cpu, Clock, Fenced, Offsets, Selection, ERROR_COLUMN};
use crate::config::{Config, PipelineConfig};
use crate::control::Control;
use crate::dlq::{DeadLetterWriter, Delivery, DeliveryError};
use crate::engine::{new_session, FailedRow, Isolated, SqlProblem, SqlStage};
use crate::sink::iceberg::{load_state, CommitStats, TableState};
use crate::sink::SinkError;
use crate::source::{MicroBatch, Source, SourceError, SourceEvent};
use crate::telemetry::{CategoryLabel, PartitionLabel, TableLabel, Telemetry};
use crate::window::aggregate::SplitAggregate;
use crate::window::{EventTimeBounds, TimeLimits, WindowError, WindowOperator};
use events::EventsBranch;
use handover::Handover;
use metrics::MetricsBranch;
use outage::Outage;
use plan::{plan_pipeline, PlannedSql};
use progress::{resume_point, Progress, TableRole};
use rejects::{dead_letter, from_failed_rows, from_rejected_rows, Rejected, Rejection};

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
    /// The dead letters could not be delivered.
    #[error("pipeline {pipeline}")]
    DeadLetters {
        pipeline: String,
        source: DeliveryError,
    },
    /// The source or the dead letter delivery could not be connected (the broker's clients,
    /// topics that do not exist).
    #[error("pipeline {pipeline}")]
    Connect {
        pipeline: String,
        source: Box<dyn std::error::Error + Send + Sync>,
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
    /// `run --until-caught-up --flush-open-windows`: partitions with open windows, which only
    /// the runner holding a partition can flush, stayed with other members for too long.
    #[error("pipeline {pipeline}: --flush-open-windows: partition(s) {partitions} of {topic} have open windows and stayed with other members of the consumer group ({members} member(s)) for {waited:?}, so this run could not flush them; run it again once no other runner holds them")]
    Unflushed {
        pipeline: String,
        topic: String,
        partitions: String,
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

impl From<Box<PipelineError>> for PipelineError {
    fn from(error: Box<PipelineError>) -> Self {
        *error
    }
}

impl From<std::convert::Infallible> for PipelineError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
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
    /// CPU time per stage.
    pub cpu: StageCpu,
}

/// CPU time a runner spent in each stage, on whichever threads ran it (the source's thread and
/// the Kafka client's own are not among them). The files and the landing of a commit that did not
/// land are not counted.
#[derive(Debug, Clone, Default)]
pub struct StageCpu {
    /// The parsing SQL over the micro-batches, and routing its output.
    pub parse: Duration,
    /// Taking valid rows into the events table's buffer, split by partition.
    pub buffer: Duration,
    /// The window operator: folding rows in, closing windows, checkpointing its state.
    pub window: Duration,
    /// Encoding both tables' data files (Parquet).
    pub data_files: Duration,
    /// Landing both tables' snapshots: manifests, catalog commits, reloads.
    pub landing: Duration,
    /// Building dead letters and handing them to the producer.
    pub dead_letters: Duration,
}

impl StageCpu {
    /// The stages' sum.
    pub fn total(&self) -> Duration {
        self.parse + self.buffer + self.window + self.data_files + self.landing + self.dead_letters
    }
}

/// How a commit of one table ended.
pub enum Landing {
    /// It landed.
    Committed(CommitStats),
    /// Another runner had moved partitions on: nothing landed.
    Fenced(Fenced),
}

/// The pipeline's SQL, planned and checked against the tables' schemas: nothing is consumed
/// before this succeeds.
pub struct Planned {
    sql: PlannedSql,
    parse: SqlStage,
    parse_file: String,
    /// The metrics SQL's aggregate in its phases, for the window operator.
    metrics: SplitAggregate,
}

impl Planned {
    /// Plans the parsing and metrics SQL of `pipeline`.
    pub async fn new(config: &Config, pipeline: &PipelineConfig) -> Result<Self, PipelineError> {
        let ctx = new_session();
        let sql = plan_pipeline(config, pipeline, &ctx)
            .await
            .map_err(|problems| PipelineError::Sql {
                pipeline: pipeline.name.clone(),
                problems,
            })?;
        let parse_file = config.resolve(&pipeline.sql.parse).display().to_string();
        let parse = SqlStage::new(&ctx, &sql.parse)
            .await
            .map_err(|e| PipelineError::Sql {
                pipeline: pipeline.name.clone(),
                problems: vec![SqlProblem::whole_file(&parse_file, e.to_string())],
            })?;
        let metrics = plan::split_metrics(&ctx, &sql)
            .await
            .map_err(|e| metrics_problem(config, pipeline, e))?;
        let planned = Self {
            sql,
            parse,
            parse_file,
            metrics,
        };
        // The window operator is built per runner; whether it can be is known now.
        planned.window_operator(config, pipeline)?;
        Ok(planned)
    }

    /// A window operator with empty state over the metrics SQL's phases, with inputs of its own.
    fn window_operator(
        &self,
        config: &Config,
        pipeline: &PipelineConfig,
    ) -> Result<WindowOperator, Box<PipelineError>> {
        plan::operator_of(
            self.metrics.fork(),
            &self.sql,
            pipeline.window.allowed_lateness,
            pipeline.window.idle_timeout,
        )
        .map_err(|e| Box::new(metrics_problem(config, pipeline, e)))
    }

    /// Both SQL files' plans and the tables' schemas.
    pub fn sql(&self) -> &PlannedSql {
        &self.sql
    }

    /// The same SQL for another runner of the pipeline in this process, with inputs of its
    /// own: nothing is planned again.
    pub fn fork(&self) -> Self {
        Self {
            sql: self.sql.clone(),
            parse: self.parse.fork(),
            parse_file: self.parse_file.clone(),
            metrics: self.metrics.fork(),
        }
    }
}

/// The metrics SQL cannot run as a window operator.
fn metrics_problem(
    config: &Config,
    pipeline: &PipelineConfig,
    error: WindowError,
) -> PipelineError {
    PipelineError::Sql {
        pipeline: pipeline.name.clone(),
        problems: vec![SqlProblem::whole_file(
            config.resolve(&pipeline.sql.metrics),
            Causes(&error).to_string(),
        )],
    }
}

/// What a runner reads from and sends its dead letters to.
pub struct Connections<S, D> {
    /// The source topic, as the group assigns it.
    pub source: S,
    /// The dead letter topic.
    pub dead_letters: DeadLetterWriter<D>,
    /// Partitions of the source topic when the run starts.
    pub topic_partitions: usize,
    /// The control topic, with `commit.mode: one_committer`.
    pub control: Option<Box<dyn Control>>,
}

/// How long a runner that holds only some of the partitions stays caught up before it looks
/// at the others (`--until-caught-up`), and how often it looks again while they are behind.
/// Another runner leaving the group moves partitions around, and the move reaches each member
/// at its next heartbeat (every second). It stops only once the tables hold every partition of
/// the topic up to its end: stopping when its own were done once left partitions unread by
/// anyone while every runner reported success.
const SETTLE: Duration = Duration::from_secs(3);

/// A partition of the topic the tables do not hold up to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Behind {
    partition: i32,
    /// Where the tables resume it (none: never read).
    tables: Option<i64>,
    /// Where it ends (none: the probe could not tell).
    end: Option<i64>,
}

/// What both tables hold for the pipeline, as one load found them.
struct Standing {
    events: TableState,
    metrics: TableState,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    Next,
    /// Caught up (`--until-caught-up`): stop reading.
    Stop,
}

/// One run's moving parts: the source, the two branches, the dead letter writer and the
/// offsets, with what the run has done so far. `campaign_kafka::run` drives it on Kafka; the simulation tests
/// drive it step by step on a scripted source and a simulated clock.
pub struct Runner<S: Source, D: Delivery> {
    pipeline: Arc<PipelineConfig>,
    options: Arc<RunOptions>,
    stages: Stages,
    branches: Branches,
    source: S,
    dlq: DeadLetterWriter<D>,
    clock: Arc<dyn Clock>,
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
    /// `--until-caught-up`: the partitions of other runners last seen behind, and since when
    /// they have not moved.
    waiting: Option<(Vec<Behind>, Instant)>,
    /// `--flush-open-windows`: since when the tables have held every partition and only
    /// other members' open windows kept the run from ending.
    unflushed_since: Option<Instant>,
    /// With `commit.mode: one_committer`: where rows are handed to the committer.
    handover: Option<Handover>,
    /// Whether the control topic went first at the last step.
    control_first: bool,
}

/// What a step takes in.
enum Input {
    /// The source's next event (`None`: the source stopped, or a shutdown was asked for).
    Source(Option<Result<SourceEvent, SourceError>>),
    /// A message of the control topic.
    Control(crate::control::ControlMessage),
}

impl<S: Source, D: Delivery> Runner<S, D> {
    /// Opens both tables' branches on `catalog` and connects the source and the dead letter
    /// topic; nothing is held until the source assigns partitions.
    pub async fn open<E>(
        config: &Config,
        pipeline: &PipelineConfig,
        options: RunOptions,
        planned: Planned,
        catalog: Arc<dyn iceberg::Catalog>,
        clock: Arc<dyn Clock>,
        connect: impl FnOnce(Arc<dyn iceberg::Catalog>) -> Result<Connections<S, D>, E>,
    ) -> Result<Self, PipelineError>
    where
        E: Into<PipelineError>,
    {
        let events =
            EventsBranch::open(pipeline, catalog.clone(), &planned.sql.parse_output).await?;
        let operator = planned.window_operator(config, pipeline)?;
        let metrics = MetricsBranch::open(
            config,
            pipeline,
            operator,
            &planned.sql,
            catalog.clone(),
            clock.clone(),
        )
        .await?;
        let connections = connect(catalog.clone()).map_err(Into::into)?;
        tracing::info!(pipeline = %pipeline.name, bound = %memory::MemoryBound::of(pipeline), "peak memory bound of this configuration");
        let now = clock.now();
        Ok(Self {
            pipeline: Arc::new(pipeline.clone()),
            stages: Stages {
                parse: planned.parse,
                parse_file: planned.parse_file,
                pipeline: pipeline.name.clone(),
                bounds: EventTimeBounds::new(pipeline.window.max_future, pipeline.window.max_past),
                time_column: planned.sql.window.time_column.clone(),
                clock: clock.clone(),
            },
            options: Arc::new(options),
            branches: Branches { events, metrics },
            source: connections.source,
            dlq: connections.dead_letters,
            progress: Progress::new(&pipeline.source.topic),
            summary: RunSummary::default(),
            window: CommitWindow::since(now),
            assigned: BTreeSet::new(),
            unassigned_since: Some(now),
            topic_partitions: connections.topic_partitions,
            caught_up_since: None,
            outage: None,
            catalog,
            waiting: None,
            unflushed_since: None,
            handover: connections
                .control
                .map(|control| Handover::new(control, format!("pid {}", std::process::id()))),
            control_first: false,
            clock,
        })
    }

    /// Reads until caught up (with `until_caught_up`) or told to shut down, then commits what
    /// is left.
    pub async fn run(mut self) -> Result<RunSummary, PipelineError> {
        loop {
            while let Some(Flow::Next) = self.step().await? {}
            if self.finish().await? {
                break;
            }
        }
        self.source.stop();
        Ok(self.summary())
    }

    /// Takes the source's next event and acts on it (riding out a failure of the object store
    /// or the catalog). `None` once the source has stopped or a shutdown was asked for.
    pub async fn step(&mut self) -> Result<Option<Flow>, PipelineError> {
        let mut shutdown = self.options.shutdown.clone();
        // The source and the control topic take turns going first, so that neither a steady
        // stream of batches nor one of shares keeps the other waiting (and a schedule of the
        // simulation names one order).
        self.control_first = !self.control_first;
        let input = if self.control_first {
            tokio::select! {
                biased;
                message = Handover::next(&mut self.handover) => Input::Control(message),
                event = self.source.next() => Input::Source(event),
                _ = shutdown.wait_for(|stop| *stop) => Input::Source(None),
            }
        } else {
            tokio::select! {
                biased;
                event = self.source.next() => Input::Source(event),
                message = Handover::next(&mut self.handover) => Input::Control(message),
                _ = shutdown.wait_for(|stop| *stop) => Input::Source(None),
            }
        };
        let event = match input {
            Input::Source(event) => event,
            Input::Control(message) => {
                if let Err(error) = self.control_message(message).await {
                    self.ride_out(error).await?;
                }
                return Ok(Some(Flow::Next));
            }
        };
        let Some(event) = event else {
            return Ok(None);
        };
        let event = event.map_err(|source| PipelineError::Source {
            pipeline: self.pipeline.name.clone(),
            source,
        })?;
        let step = match event {
            SourceEvent::Revoked => {
                self.revoked().await;
                return Ok(Some(Flow::Next));
            }
            SourceEvent::Assigned { partitions } => self.assigned(partitions).await,
            SourceEvent::Jumped { partition, jump } => {
                self.jumped(partition, jump);
                return Ok(Some(Flow::Next));
            }
            SourceEvent::Batch(batch) => self.batch(batch).await,
        };
        match step {
            Ok(flow) => Ok(Some(flow)),
            Err(error) => {
                self.ride_out(error).await?;
                Ok(Some(Flow::Next))
            }
        }
    }

    /// At the end of reading: flushes the open windows when asked and commits what is left.
    /// `false` when that commit failed in a way that passes and reading must go on
    /// (`until_caught_up`: the uncommitted part is read again).
    pub async fn finish(&mut self) -> Result<bool, PipelineError> {
        match self.final_commit().await {
            Ok(()) => Ok(true),
            Err(error) if self.options.until_caught_up && !*self.options.shutdown.borrow() => {
                self.ride_out(error).await?;
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// What the run did so far, with the dead letters sent and the offsets the events table
    /// holds.
    pub fn summary(&self) -> RunSummary {
        let mut summary = self.summary.clone();
        summary.dead_letters = self.dlq.counts().clone();
        summary.offsets = self.branches.events.offsets().clone();
        summary
    }

    fn name(&self) -> &str {
        &self.pipeline.name
    }

    /// The group took every partition away: what was not committed is dropped.
    async fn revoked(&mut self) {
        let dropped = self.branches.drop_buffered().await;
        self.progress
            .hold(&BTreeSet::new(), &Offsets::new(), &Offsets::new());
        self.assigned.clear();
        if let Some(t) = &self.options.telemetry {
            t.hold(&self.assigned);
        }
        tracing::info!(pipeline = %self.name(), dropped_rows = dropped, "partitions revoked: dropped what was not committed");
        self.unassigned_since = Some(self.clock.now());
        self.caught_up_since = None;
    }

    /// The group gave this runner `partitions`: they are taken over from the tables.
    async fn assigned(&mut self, partitions: BTreeSet<i32>) -> Result<Flow, PipelineError> {
        self.assigned = partitions;
        let now = self.clock.now();
        self.unassigned_since = self.assigned.is_empty().then_some(now);
        self.caught_up_since = None;
        self.take_over().await?;
        if let Some(t) = &self.options.telemetry {
            t.hold(&self.assigned);
        }
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
        self.window = CommitWindow::since(self.clock.now());
        Ok(())
    }

    /// Runs one micro-batch through the stages, and commits when one is due.
    async fn batch(&mut self, batch: MicroBatch) -> Result<Flow, PipelineError> {
        let options = self.options.clone();
        let elapsed = |since: Instant| self.clock.now().saturating_duration_since(since);
        if let Some(since) = self.unassigned_since.filter(|_| options.until_caught_up) {
            if elapsed(since) > options.max_unassigned {
                return Err(PipelineError::Unassigned {
                    pipeline: self.name().to_string(),
                    topic: self.pipeline.source.topic.clone(),
                    waited: elapsed(since),
                    members: self.group_members(),
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
            .process(
                &batch,
                &self.progress,
                &mut self.branches,
                &mut self.summary.cpu,
            )
            .await?;
        self.progress.handed_on(&batch.next_offsets);
        let (sent, spent) = cpu::timed(self.send_dead_letters(letters)).await;
        self.summary.cpu.dead_letters += spent;
        sent?;
        let now = self.clock.now();
        let (advanced, spent) = cpu::timed(self.branches.metrics.advance(&batch.at_end, now)).await;
        self.summary.cpu.window += spent;
        advanced?;
        if let Some(t) = &options.telemetry {
            report_progress(
                t,
                &self.source.lag(),
                self.branches.metrics.watermark_micros(),
            );
        }

        let elapsed = |since: Instant| self.clock.now().saturating_duration_since(since);
        let due = elapsed(self.window.opened) >= self.pipeline.commit.interval
            || self.branches.events.buffered_rows() >= self.pipeline.commit.max_rows as u64
            || (caught_up && options.until_caught_up);
        if self.pending() && due {
            let started = self.clock.now();
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
            let now = self.clock.now();
            let since = *self.caught_up_since.get_or_insert(now);
            if self.assigned.len() >= self.topic_partitions {
                tracing::info!(pipeline = %self.name(), "caught up");
                return Ok(Flow::Stop);
            }
            if now.saturating_duration_since(since) >= SETTLE {
                // Done with its own partitions: the run is caught up only when the tables
                // hold every other partition up to its end too.
                let standing = self.standing().await?;
                let behind = self.others_behind(&standing).await?;
                if behind.is_empty() {
                    // A flush needs the windows of every partition, which only the runner
                    // holding one has: wait for the group to hand the others over (a runner
                    // that died leaves it when its session times out).
                    let unflushed = if options.flush_open_windows {
                        self.unflushed_elsewhere(&standing)
                    } else {
                        Vec::new()
                    };
                    if unflushed.is_empty() {
                        tracing::info!(pipeline = %self.name(), "caught up: the tables hold every partition of the topic up to its end");
                        return Ok(Flow::Stop);
                    }
                    let waited =
                        now.saturating_duration_since(*self.unflushed_since.get_or_insert(now));
                    if waited > options.max_unassigned {
                        return Err(PipelineError::Unflushed {
                            pipeline: self.name().to_string(),
                            topic: self.pipeline.source.topic.clone(),
                            partitions: unflushed
                                .iter()
                                .map(i32::to_string)
                                .collect::<Vec<_>>()
                                .join(", "),
                            waited,
                            members: self.group_members(),
                        });
                    }
                    tracing::info!(pipeline = %self.name(), partitions = ?unflushed, "the tables hold every partition to its end; waiting for the group to hand over the partitions whose open windows other members hold, to flush them");
                    self.caught_up_since = Some(now);
                    return Ok(Flow::Next);
                }
                let still = match self.waiting.take() {
                    Some((before, at)) if before == behind => at,
                    _ => now,
                };
                let waited = now.saturating_duration_since(still);
                if waited > options.max_unassigned {
                    return Err(PipelineError::PartitionsBehind {
                        pipeline: self.name().to_string(),
                        topic: self.pipeline.source.topic.clone(),
                        behind: describe_behind(&behind),
                        waited,
                        members: self.group_members(),
                    });
                }
                tracing::info!(pipeline = %self.name(), behind = %describe_behind(&behind), "own partitions caught up; waiting for the runners that hold the others");
                self.waiting = Some((behind, still));
                self.caught_up_since = Some(now);
            }
        } else {
            self.caught_up_since = None;
        }
        Ok(Flow::Next)
    }

    /// Hands a micro-batch's dead letters to the producer and counts the ones sent.
    async fn send_dead_letters(&mut self, letters: Vec<Rejected>) -> Result<(), PipelineError> {
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
                .map_err(|source| PipelineError::DeadLetters {
                    pipeline: self.pipeline.name.clone(),
                    source,
                })?;
            if !sent {
                continue;
            }
            let late = rejection == Rejection::Late;
            self.window.dead_letters += 1;
            self.window.late += u64::from(late);
            if let Some(t) = &self.options.telemetry {
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
        Ok(())
    }

    /// How many members the consumer group has, for messages.
    fn group_members(&self) -> String {
        self.source
            .group_members()
            .map_or_else(|| "an unknown number of".into(), |n| n.to_string())
    }

    /// The partitions other members hold whose window state, as the metrics table's newest
    /// checkpoints record it, may have open windows.
    fn unflushed_elsewhere(&self, standing: &Standing) -> Vec<i32> {
        standing
            .metrics
            .checkpoints
            .0
            .iter()
            .filter(|(partition, checkpoint)| {
                !self.assigned.contains(partition)
                    && self.branches.metrics.has_open_windows(checkpoint)
            })
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// What both tables hold for this pipeline now, loaded afresh.
    async fn standing(&self) -> Result<Standing, PipelineError> {
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
        Ok(Standing {
            events: load(&sink.events_table.name).await.map_err(sink_err)?,
            metrics: load(&sink.metrics_table.name).await.map_err(sink_err)?,
        })
    }

    /// The partitions of the topic this runner does not hold whose events `standing` does not
    /// hold up to the partition's end (a partition whose end could not be read counts).
    async fn others_behind(&self, standing: &Standing) -> Result<Vec<Behind>, PipelineError> {
        let Standing { events, metrics } = standing;
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
        let ends =
            self.source
                .partition_ends(&from)
                .await
                .map_err(|source| PipelineError::Source {
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

    /// Flushes the open windows when asked, and commits what is left.
    async fn final_commit(&mut self) -> Result<(), PipelineError> {
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
        let pipeline = self.pipeline.clone();
        let (flushed, spent) = cpu::timed(self.dlq.flush()).await;
        self.summary.cpu.dead_letters += spent;
        flushed.map_err(|source| PipelineError::DeadLetters {
            pipeline: pipeline.name.clone(),
            source,
        })?;
        let fenced = |table: &str, fenced: Fenced| {
            tracing::warn!(pipeline = %pipeline.name, table, "commit refused, {fenced}: dropping what this runner read of its partitions and reading them again from the tables");
            None
        };
        let committed = if self.hands_over() {
            let handed = self.hand_over().await;
            self.summary.cpu.window += self.branches.metrics.take_checkpoint_cpu();
            match handed? {
                Some(committed) => committed,
                None => return Ok(None),
            }
        } else {
            let events = match self.branches.events.commit(&mut self.progress).await? {
                Landing::Committed(stats) => stats,
                Landing::Fenced(f) => return Ok(fenced(self.branches.events.label(), f)),
            };
            let landed = self.branches.metrics.commit(&mut self.progress).await;
            self.summary.cpu.window += self.branches.metrics.take_checkpoint_cpu();
            let metrics = match landed? {
                Landing::Committed(stats) => stats,
                Landing::Fenced(f) => return Ok(fenced(self.branches.metrics.label(), f)),
            };
            Committed { events, metrics }
        };
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
                &pipeline,
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
        let seconds = (self.clock.now())
            .saturating_duration_since(window.opened)
            .as_secs_f64()
            .max(1e-3);
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
                _ = self.clock.sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Err(last),
            }
            // Nothing is held while the tables are loaded again: dead letters already sent
            // must be delivered before the source reads their messages again.
            self.dlq
                .flush()
                .await
                .map_err(|source| PipelineError::DeadLetters {
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

/// Where each of `partitions` of the pipeline's topic resumes, as the tables hold it (a
/// partition neither table holds anything from is missing): what a source positions an assigned
/// partition at.
pub async fn resume_offsets(
    catalog: &dyn iceberg::Catalog,
    pipeline: &PipelineConfig,
    partitions: &[i32],
) -> Result<Offsets, SinkError> {
    let sink = &pipeline.sink;
    let events = load_state(
        catalog,
        &sink.namespace,
        &sink.events_table.name,
        &pipeline.name,
    )
    .await?;
    let metrics = load_state(
        catalog,
        &sink.namespace,
        &sink.metrics_table.name,
        &pipeline.name,
    )
    .await?;
    let topic = &pipeline.source.topic;
    let mut resume = Offsets::new();
    for partition in partitions {
        if let Some(next) = resume_point(&events.offsets, &metrics.offsets, topic, *partition) {
            resume.set(topic, *partition, next);
        }
    }
    Ok(resume)
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
        for stats in [&committed.events, &committed.metrics] {
            self.cpu.data_files += stats.files_cpu;
            self.cpu.landing += stats.landing_cpu;
        }
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
struct Stages {
    parse: SqlStage,
    parse_file: String,
    pipeline: String,
    /// How far from the clock an event time may be.
    bounds: EventTimeBounds,
    /// The window's event-time column.
    time_column: String,
    clock: Arc<dyn Clock>,
}

impl Stages {
    /// Parses one micro-batch: valid rows go to the events table (those it does not hold yet)
    /// and to the window; rejected rows, rows stamped too far ahead of the clock, and late and
    /// untimed rows become dead letters.
    async fn process(
        &self,
        batch: &MicroBatch,
        progress: &Progress,
        branches: &mut Branches,
        cpu: &mut StageCpu,
    ) -> Result<Vec<Rejected>, PipelineError> {
        let events_skip = &progress.absorbed_ahead(TableRole::Events);
        let metrics_skip = &progress.absorbed_ahead(TableRole::Metrics);
        let pipeline = self.pipeline.as_str();
        let wall = self.clock.wall_micros();
        let failed_at = wall_text(wall);
        let mut letters: Vec<Rejected> = batch
            .not_utf8
            .iter()
            .filter(|raw| !events_skip.passed(&raw.topic, raw.partition, raw.offset))
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
        let (parsed, spent) = cpu::timed(self.parse.run_isolating(&batch.records)).await;
        cpu.parse += spent;
        let Isolated { outputs, failed } = parsed.map_err(exec_err)?;
        if !failed.is_empty() {
            let (built, spent) = cpu::measure(|| {
                let failed = unabsorbed_rows(failed, &batch.records, events_skip)?;
                from_failed_rows(&failed, &batch.records, pipeline, &failed_at)
            });
            cpu.dead_letters += spent;
            letters.extend(built.map_err(|e| exec_err(e.into()))?);
        }
        let now = self.clock.now();
        let limits = self.bounds.at(wall);
        for output in &outputs {
            let (routed, spent) = cpu::measure(|| route(output, limits, &self.time_column));
            cpu.parse += spent;
            let Routed {
                valid,
                rejected,
                future,
            } = routed.map_err(exec_err)?;
            let (taken, spent) = cpu::timed(branches.events.take(&valid, events_skip)).await;
            cpu.buffer += spent;
            taken?;
            let (rejected_letters, spent) = cpu::measure(|| {
                let mut built = Vec::new();
                for rejected in [rejected, future] {
                    let rejected = unabsorbed(&rejected, events_skip)?;
                    built.extend(from_rejected_rows(
                        &rejected,
                        Rejection::Error,
                        &batch.records,
                        pipeline,
                        &failed_at,
                    )?);
                }
                Ok::<_, arrow::error::ArrowError>(built)
            });
            cpu.dead_letters += spent;
            letters.extend(rejected_letters.map_err(|e| exec_err(e.into()))?);
            let (sorted, spent) =
                cpu::timed(branches.metrics.take(&valid, metrics_skip, limits, now)).await;
            cpu.window += spent;
            let sorted = sorted?;
            for (rows, rejection) in [
                (&sorted.late, Rejection::Late),
                (&sorted.untimed, Rejection::Untimed),
            ] {
                let (built, spent) = cpu::measure(|| {
                    from_rejected_rows(rows, rejection, &batch.records, pipeline, &failed_at)
                });
                cpu.dead_letters += spent;
                letters.extend(built.map_err(|e| exec_err(e.into()))?);
            }
        }
        tag_replays(&mut letters, batch);
        Ok(letters)
    }
}

/// Where the rows of one output of the parsing SQL go: the one place that says it, for `run`,
/// `check --sample` and the benches.
pub struct Routed {
    /// Valid rows within the clock's bounds, chosen from the output without a copy: the events
    /// table and the window each copy what they keep of them.
    pub valid: Selection,
    /// Rows the parsing SQL rejected (`_error` says why): dead letters.
    pub rejected: RecordBatch,
    /// Valid rows stamped too far ahead of the clock (`_error` says so): dead letters, in
    /// neither table.
    pub future: RecordBatch,
}

/// Routes one output of the parsing SQL under the clock's `limits` (`time_column`: the
/// window's event time).
pub fn route(
    output: &RecordBatch,
    limits: TimeLimits,
    time_column: &str,
) -> Result<Routed, datafusion::error::DataFusionError> {
    let errors = output.column(output.schema().index_of(ERROR_COLUMN)?);
    let valid = Selection::of(output.clone(), is_null(errors)?)?;
    let rejected = match valid.keep() {
        Some(keep) => filter_record_batch(output, &not(keep)?)?,
        None => output.slice(0, 0),
    };
    let (future, future_rows) = limits.future(&valid, time_column)?;
    let valid = match future {
        Some(future) => valid.and(&not(&future)?)?,
        None => valid,
    };
    Ok(Routed {
        valid,
        rejected,
        future: future_rows,
    })
}

/// The rows of parsed output at or past `absorbed` in their partition (the rest is already in
/// the table that `absorbed` belongs to). `absorbed` only lists partitions where a table is
/// ahead of the resume point, so in steady state it is empty and this costs nothing.
pub fn unabsorbed(
    rows: &RecordBatch,
    absorbed: &Offsets,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    unabsorbed_selection(&Selection::all(rows.clone()), absorbed)?.to_batch()
}

/// [`unabsorbed`] of the chosen rows, as a choice among the same batch's rows.
pub fn unabsorbed_selection(
    rows: &Selection,
    absorbed: &Offsets,
) -> Result<Selection, arrow::error::ArrowError> {
    if rows.num_rows() == 0 || absorbed.is_empty() {
        return Ok(rows.clone());
    }
    let batch = rows.batch();
    let at = Coordinates::of(batch)?;
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|i| {
            Some(!absorbed.passed(
                at.topics.value(i),
                at.partitions.value(i),
                at.offsets.value(i),
            ))
        })
        .collect();
    rows.and(&keep)
}

/// The rows the parsing SQL failed on at or past `absorbed` in their partition (see
/// [`unabsorbed`]: the others' dead letters were sent with the table's commit that holds them).
fn unabsorbed_rows(
    failed: Vec<FailedRow>,
    input: &RecordBatch,
    absorbed: &Offsets,
) -> Result<Vec<FailedRow>, arrow::error::ArrowError> {
    if absorbed.is_empty() {
        return Ok(failed);
    }
    let records = KafkaRecords::new(input)?;
    Ok(failed
        .into_iter()
        .filter(|f| {
            let row = f.row;
            !absorbed.passed(
                records.topic(row),
                records.partition(row),
                records.offset(row),
            )
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::common::records::{OFFSET, PARTITION, TOPIC};

    const S: i64 = 1_000_000;

    /// Parsing output: offsets 0..5; offset 1 rejected by the SQL, offset 3 stamped far ahead,
    /// offset 4 both (the SQL's reason wins).
    fn output() -> RecordBatch {
        let times = [0, 10, 20, 9_000, 9_000].map(|t| Some(1_700_000_000 * S + t * S));
        RecordBatch::try_from_iter([
            (
                "timestamp",
                Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")) as _,
            ),
            (TOPIC, Arc::new(StringArray::from(vec!["t"; 5])) as _),
            (PARTITION, Arc::new(Int32Array::from(vec![0; 5])) as _),
            (OFFSET, Arc::new(Int64Array::from_iter_values(0..5)) as _),
            (
                ERROR_COLUMN,
                Arc::new(StringArray::from(vec![
                    None,
                    Some("missing user_id"),
                    None,
                    None,
                    Some("blank event_id"),
                ])) as _,
            ),
        ])
        .unwrap()
    }

    fn offsets(rows: &RecordBatch) -> Vec<i64> {
        rows.column_by_name(OFFSET)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn valid_rows_are_chosen_and_the_others_go_with_their_reasons() {
        let limits = TimeLimits {
            earliest: 0,
            latest: 1_700_000_300 * S,
        };
        let Routed {
            valid,
            rejected,
            future,
        } = route(&output(), limits, "timestamp").unwrap();
        assert_eq!(valid.batch().num_rows(), 5, "chosen, not copied out");
        assert_eq!(offsets(&valid.to_batch().unwrap()), [0, 2]);
        assert_eq!(offsets(&rejected), [1, 4]);
        assert_eq!(offsets(&future), [3]);
        let reason = future.column_by_name(ERROR_COLUMN).unwrap();
        assert!(reason
            .as_string::<i32>()
            .value(0)
            .starts_with("future timestamp: "));

        let unbounded = route(&output(), TimeLimits::UNBOUNDED, "timestamp").unwrap();
        assert_eq!(offsets(&unbounded.valid.to_batch().unwrap()), [0, 2, 3]);
        assert_eq!(unbounded.future.num_rows(), 0);
    }

    #[test]
    fn rows_a_table_holds_already_leave_the_choice() {
        let routed = route(&output(), TimeLimits::UNBOUNDED, "timestamp").unwrap();
        let mut absorbed = Offsets::default();
        absorbed.set("t", 0, 3);
        let rows = unabsorbed_selection(&routed.valid, &absorbed).unwrap();
        assert_eq!(offsets(&rows.to_batch().unwrap()), [3]);
        let none = unabsorbed_selection(&routed.valid, &Offsets::default()).unwrap();
        assert_eq!(none.num_rows(), 3);
    }
}
