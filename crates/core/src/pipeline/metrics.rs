//! The metrics branch: parsed events → window operator → campaign_metrics table, with the
//! open-window state of each source partition checkpointed beside every commit, restored when
//! the partition is assigned to this runner and released when it is revoked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use iceberg::Catalog;

use super::plan::PlannedSql;
use super::progress::{Progress, TableRole};
use super::{Landing, PipelineError};
use crate::common::error::Causes;
use crate::common::summary::PartitionCheckpoint;
use crate::common::{cpu, format_micros, Clock, Offsets, Selection};
use crate::config::{Config, PipelineConfig};
use crate::sink::checkpoint;
use crate::sink::claim::Claim;
use crate::sink::iceberg::{Share, SnapshotContent, TableWriter};
use crate::sink::SinkError;
use crate::window::{
    EventTimeBounds, PartitionTime, Sorted, TimeLimits, WindowError, WindowOperator,
};

/// How often restoring held partitions re-reads the table when a checkpoint it points to has
/// just been replaced (and deleted) by another runner's commit.
const RESTORE_ATTEMPTS: u32 = 3;

/// What the commit log line says of the window state.
#[derive(Debug, Clone, Default)]
pub struct WindowStateSummary {
    /// Windows open in the held partitions.
    pub open_windows: usize,
    /// Bytes of their state.
    pub state_bytes: usize,
    /// The runner's watermark (RFC 3339), when it has one.
    pub watermark: Option<String>,
}

/// The window operator and the table its closed windows go to.
pub struct MetricsBranch {
    operator: WindowOperator,
    writer: TableWriter,
    /// Window rows written since the last commit.
    emitted: u64,
    pipeline: String,
    /// The metrics SQL file, named when a checkpoint no longer fits it.
    metrics_file: std::path::PathBuf,
    /// How far from the clock event time may be, also for restored progress.
    bounds: EventTimeBounds,
    /// Where checkpoints go instead of the table's folder (`sink.checkpoints`).
    checkpoints: Option<String>,
    clock: Arc<dyn Clock>,
    /// CPU time checkpointing since [`Self::take_checkpoint_cpu`].
    checkpoint_cpu: Duration,
}

impl MetricsBranch {
    /// Opens (and if needed evolves) the metrics table for `operator`'s windows; no partition
    /// is held until [`Self::hold`].
    pub async fn open(
        config: &Config,
        pipeline: &PipelineConfig,
        operator: WindowOperator,
        planned: &PlannedSql,
        catalog: Arc<dyn Catalog>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PipelineError> {
        let name = pipeline.name.clone();
        let metrics_file = config.resolve(&pipeline.sql.metrics);
        let writer = TableWriter::open(
            catalog,
            &pipeline.sink.namespace,
            &pipeline.sink.metrics_table.name,
            &name,
            &planned.metrics_schema,
        )
        .await
        .map_err(|source| PipelineError::Sink {
            pipeline: name.clone(),
            source,
        })?
        .with_file_codec(pipeline.sink.file_codec);
        let checkpoints = pipeline.sink.checkpoints.clone();
        checkpoint::probe(&writer, checkpoints.as_deref())
            .await
            .map_err(|source| PipelineError::Sink {
                pipeline: name.clone(),
                source,
            })?;
        Ok(Self {
            operator,
            writer,
            emitted: 0,
            pipeline: name,
            metrics_file,
            bounds: EventTimeBounds::new(pipeline.window.max_future, pipeline.window.max_past),
            checkpoints,
            clock,
            checkpoint_cpu: Duration::ZERO,
        })
    }

    /// `namespace.table` of the metrics table.
    pub fn label(&self) -> &str {
        self.writer.label()
    }

    /// Loads the table's newest state and takes over `partitions` from it: each one's window
    /// state and event-time progress from its checkpoint; every other partition is released.
    /// Returns the offsets the table holds.
    pub async fn hold(&mut self, partitions: &BTreeSet<i32>) -> Result<Offsets, PipelineError> {
        for partition in self.operator.partitions() {
            self.operator.release(partition);
        }
        let mut attempt = 1;
        loop {
            let state = match self.writer.refresh().await {
                Ok(state) => state.clone(),
                Err(e) => return Err(self.sink_err(e)),
            };
            let mut restored = Vec::new();
            let mut missing = None;
            for partition in partitions {
                let Some(saved) = state.checkpoints.0.get(partition) else {
                    restored.push((*partition, None, PartitionTime::default()));
                    continue;
                };
                match checkpoint::read(&self.writer, &saved.file).await {
                    Ok(bytes) => {
                        restored.push((*partition, Some((bytes, &saved.file)), time_of(saved)))
                    }
                    Err(err) => {
                        missing = Some((*partition, saved.file.clone(), err));
                        break;
                    }
                }
            }
            if let Some((partition, file, err)) = missing {
                // Another runner may have committed a newer checkpoint and deleted this one;
                // if the table still points to it, the object store failed.
                let moved_on = attempt < RESTORE_ATTEMPTS
                    && self.writer.refresh().await.is_ok_and(|now| {
                        now.checkpoints.0.get(&partition).map(|c| &c.file) != Some(&file)
                    });
                if !moved_on {
                    return Err(self.sink_err(err));
                }
                tracing::info!(
                    table = self.label(),
                    "a checkpoint was replaced while restoring ({}); reading the table again",
                    Causes(&err)
                );
                attempt += 1;
                continue;
            }
            let now = self.clock.now();
            let limits = self.bounds.at(self.clock.wall_micros());
            for (partition, saved, time) in restored {
                let time = self.within_limits(partition, time, limits);
                let bytes = saved.as_ref().map(|(bytes, _)| bytes.as_slice());
                if let Err(source) = self.operator.restore(partition, bytes, time, now) {
                    return Err(PipelineError::Checkpoint {
                        pipeline: self.pipeline.clone(),
                        table: self.label().to_string(),
                        partition,
                        file: saved.map_or_else(String::new, |(_, file)| file.clone()),
                        metrics_file: self.metrics_file.display().to_string(),
                        source,
                    });
                }
            }
            let (windows, bytes) = self.operator.state_size();
            tracing::info!(
                pipeline = %self.pipeline,
                table = self.label(),
                ?partitions,
                offsets = %state.offsets.to_json(),
                open_windows = windows,
                state_bytes = bytes,
                watermark = ?self.operator.watermark().and_then(format_micros),
                "window state restored"
            );
            return Ok(state.offsets);
        }
    }

    /// Takes parsed valid rows (with `_partition`, `_offset`) of one micro-batch: rows at or past
    /// this table's offsets (`absorbed`: where it holds rows the source hands on again) are
    /// sorted by their partition's watermark and the clock's `limits`, on-time ones folded into
    /// the state. Returns the rows that are late or have no event time, for the dead letter
    /// queue.
    pub async fn take(
        &mut self,
        valid: &Selection,
        absorbed: &Offsets,
        limits: TimeLimits,
        now: Instant,
    ) -> Result<Sorted, PipelineError> {
        let rows =
            super::unabsorbed_selection(valid, absorbed).map_err(|e| self.window_err(e.into()))?;
        let sorted = self.operator.take(&rows, limits.earliest, now).await;
        sorted.map_err(|e| self.window_err(e))
    }

    /// Moves the held partitions' watermarks and writes the windows they have passed.
    pub async fn advance(
        &mut self,
        at_end: &BTreeSet<i32>,
        now: Instant,
    ) -> Result<(), PipelineError> {
        let closed = self
            .operator
            .advance(|p| at_end.contains(&p), now)
            .await
            .map_err(|e| self.window_err(e))?;
        self.write(closed).await
    }

    /// Writes every open window (backfills); the watermarks move past them.
    pub async fn flush(&mut self) -> Result<u64, PipelineError> {
        let closed = self
            .operator
            .flush()
            .await
            .map_err(|e| self.window_err(e))?;
        let rows = closed.iter().map(|b| b.num_rows() as u64).sum();
        self.write(closed).await?;
        Ok(rows)
    }

    /// Window rows waiting for the next commit.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Checkpoints each held partition's open windows, then commits the closed windows with
    /// the offsets `progress` decides and the checkpoints of the held partitions, on the table
    /// state the commit lands on; then deletes the checkpoints it replaced.
    pub async fn commit(&mut self, progress: &mut Progress) -> Result<Landing, PipelineError> {
        let partitions = progress.owned().clone();
        let (saved, spent) = cpu::timed(self.save_checkpoints(partitions)).await;
        self.checkpoint_cpu += spent;
        let saved = saved?;
        let mut replaced: Vec<String> = Vec::new();
        let decided = self
            .writer
            .commit(|state| {
                let offsets = progress.decide(TableRole::Metrics, &state.offsets)?;
                let mut checkpoints = state.checkpoints.clone();
                replaced.clear();
                for (partition, new) in &saved {
                    if let Some(old) = checkpoints.0.insert(*partition, new.clone()) {
                        replaced.push(old.file);
                    }
                }
                Ok(SnapshotContent {
                    offsets,
                    checkpoints: Some(checkpoints),
                    jumps: progress.jumps(TableRole::Metrics),
                })
            })
            .await;
        match decided {
            Ok(stats) => {
                progress.committed(TableRole::Metrics, &self.writer.state().offsets);
                for file in replaced {
                    checkpoint::remove(&self.writer, &file).await;
                }
                self.emitted = 0;
                Ok(Landing::Committed(stats))
            }
            Err(SinkError::Fenced { source, .. }) => {
                for new in saved.values() {
                    checkpoint::remove(&self.writer, &new.file).await;
                }
                Ok(Landing::Fenced(source))
            }
            Err(other) => Err(self.sink_err(other)),
        }
    }

    /// Checkpoints the held partitions' window state and writes the windows closed since the
    /// last commit into data files for the committer, with this runner's claim on the table.
    pub async fn share(&mut self, progress: &Progress) -> Result<Share, PipelineError> {
        let partitions = progress.owned().clone();
        let (saved, spent) = cpu::timed(self.save_checkpoints(partitions)).await;
        self.checkpoint_cpu += spent;
        let mut claim = progress.claim(TableRole::Metrics);
        claim.checkpoints = Some(saved?);
        self.emitted = 0;
        match self.writer.share(claim.clone()).await {
            Ok(share) => Ok(share),
            Err(e) => {
                self.delete_checkpoints(&claim).await;
                Err(self.sink_err(e))
            }
        }
    }

    /// The committer landed this runner's share: its partitions stand where the claim said,
    /// with its checkpoints.
    pub fn landed_elsewhere(&mut self, progress: &mut Progress, share: &Share) {
        progress.committed(TableRole::Metrics, &share.claim.records());
        self.writer.landed_elsewhere(&share.claim);
    }

    /// Deletes the files and checkpoints of a share that no snapshot took.
    pub async fn delete_share(&self, share: &Share) {
        self.writer.delete_share(share).await;
        self.delete_checkpoints(&share.claim).await;
    }

    async fn delete_checkpoints(&self, claim: &Claim) {
        for checkpoint in claim.checkpoints.iter().flat_map(|c| c.values()) {
            checkpoint::remove(&self.writer, &checkpoint.file).await;
        }
    }

    /// The table's writer (shares are encoded, decoded and landed on it).
    pub fn writer(&mut self) -> &mut TableWriter {
        &mut self.writer
    }

    /// Whether the partition whose checkpoint this is may still have open windows.
    pub fn has_open_windows(&self, checkpoint: &PartitionCheckpoint) -> bool {
        self.operator
            .has_open_windows(checkpoint.max_event, checkpoint.watermark)
    }

    /// CPU time spent checkpointing the window state since the last call.
    pub fn take_checkpoint_cpu(&mut self) -> Duration {
        std::mem::take(&mut self.checkpoint_cpu)
    }

    /// Checkpoints each of `partitions`' open windows into a file of its own.
    async fn save_checkpoints(
        &mut self,
        partitions: BTreeSet<i32>,
    ) -> Result<BTreeMap<i32, PartitionCheckpoint>, PipelineError> {
        let mut saved: BTreeMap<i32, PartitionCheckpoint> = BTreeMap::new();
        for partition in partitions {
            let (state, time) = self
                .operator
                .checkpoint(partition)
                .await
                .map_err(|e| self.window_err(e))?;
            let file =
                checkpoint::save(&self.writer, self.checkpoints.as_deref(), partition, state)
                    .await
                    .map_err(|e| self.sink_err(e))?;
            saved.insert(
                partition,
                PartitionCheckpoint {
                    file,
                    max_event: time.max_event,
                    watermark: time.watermark,
                },
            );
        }
        Ok(saved)
    }

    /// Drops the windows written since the last commit and every partition's state (it is
    /// restored from the table by the next [`Self::hold`]).
    pub async fn discard(&mut self) -> u64 {
        for partition in self.operator.partitions() {
            self.operator.release(partition);
        }
        self.emitted = 0;
        self.writer.discard().await
    }

    /// Forgets the windows written since the last commit and every partition's state without
    /// touching the object store (see [`TableWriter::abandon`]).
    pub fn abandon(&mut self) -> u64 {
        for partition in self.operator.partitions() {
            self.operator.release(partition);
        }
        self.emitted = 0;
        self.writer.abandon()
    }

    /// The runner's watermark in microseconds since the epoch.
    pub fn watermark_micros(&self) -> Option<i64> {
        self.operator.watermark()
    }

    /// The window state's size and the watermark, for the commit log line.
    pub fn describe(&self) -> WindowStateSummary {
        let (open_windows, state_bytes) = self.operator.state_size();
        WindowStateSummary {
            open_windows,
            state_bytes,
            watermark: self.operator.watermark().and_then(format_micros),
        }
    }

    async fn write(&mut self, closed: Vec<RecordBatch>) -> Result<(), PipelineError> {
        for batch in closed {
            self.emitted += batch.num_rows() as u64;
            self.writer
                .write(&batch)
                .await
                .map_err(|source| PipelineError::Sink {
                    pipeline: self.pipeline.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    fn sink_err(&self, source: SinkError) -> PipelineError {
        PipelineError::Sink {
            pipeline: self.pipeline.clone(),
            source,
        }
    }

    /// A partition's restored progress, capped at the clock's latest bound: a checkpoint written
    /// before event time was bounded may carry a watermark years ahead, which would make every
    /// later event late.
    fn within_limits(
        &self,
        partition: i32,
        time: PartitionTime,
        limits: TimeLimits,
    ) -> PartitionTime {
        let capped = time.capped_at(limits.latest);
        if capped != time {
            tracing::warn!(
                pipeline = %self.pipeline,
                table = self.label(),
                partition,
                max_event = ?time.max_event.and_then(format_micros),
                watermark = ?time.watermark.and_then(format_micros),
                "the checkpoint's event time is ahead of the clock by more than window.max_future: capped at the bound"
            );
        }
        capped
    }

    fn window_err(&self, source: WindowError) -> PipelineError {
        PipelineError::Window {
            pipeline: self.pipeline.clone(),
            source,
        }
    }
}

/// A partition's event-time progress as its checkpoint records it.
fn time_of(saved: &PartitionCheckpoint) -> PartitionTime {
    PartitionTime {
        max_event: saved.max_event,
        watermark: saved.watermark,
    }
}
