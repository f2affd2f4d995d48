//! The metrics branch: parsed events → window operator → campaign_metrics table, with the
//! open-window state checkpointed beside every commit and restored at start.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use iceberg::Catalog;

use super::PipelineError;
use crate::common::Offsets;
use crate::config::{Config, PipelineConfig};
use crate::engine::{PlannedSql, SqlProblem};
use crate::sink::checkpoint::{self, CHECKPOINT_PROPERTY, PROGRESS_PROPERTY};
use crate::sink::iceberg::{CommitStats, TableWriter};
use crate::sink::SinkError;
use crate::window::{Progress, Sorted, WindowError, WindowOperator};

/// The window operator and the table its closed windows go to.
pub struct MetricsBranch {
    operator: WindowOperator,
    writer: TableWriter,
    /// Offsets the metrics table and its checkpoint have absorbed, where they are ahead of the
    /// resume point: rows below them are skipped until the source passes them.
    skip: Offsets,
    /// The checkpoint the table's newest snapshot points to (deleted once superseded).
    checkpoint: Option<String>,
    /// Window rows written since the last commit.
    emitted: u64,
    pipeline: String,
}

impl MetricsBranch {
    /// Splits the metrics SQL, opens (and if needed evolves) the metrics table, and restores
    /// the window state its newest snapshot points to.
    pub async fn open(
        config: &Config,
        pipeline: &PipelineConfig,
        ctx: &SessionContext,
        planned: &PlannedSql,
        catalog: Arc<dyn Catalog>,
    ) -> Result<Self, PipelineError> {
        let name = pipeline.name.clone();
        let metrics_file = config.resolve(&pipeline.sql.metrics);
        let sql_problem = |message: String| PipelineError::Sql {
            pipeline: name.clone(),
            problems: vec![SqlProblem::whole_file(&metrics_file, message)],
        };
        let mut operator = WindowOperator::for_planned(
            ctx,
            planned,
            pipeline.window.allowed_lateness,
            pipeline.window.idle_timeout,
        )
        .await
        .map_err(|e| sql_problem(e.to_string()))?;
        let sink_err = |source| PipelineError::Sink {
            pipeline: name.clone(),
            source,
        };
        let writer = TableWriter::open(
            catalog,
            &pipeline.sink.namespace,
            &pipeline.sink.metrics_table.name,
            &name,
            &planned.metrics_schema,
        )
        .await
        .map_err(sink_err)?;
        let absorbed = writer.committed_offsets().clone();
        let saved = checkpoint::load(&writer).await.map_err(sink_err)?;
        let progress: Progress = match &saved.progress {
            Some(text) => serde_json::from_str(text).map_err(|e| {
                sink_err(SinkError::Schema {
                    table: writer.label().to_string(),
                    message: format!("unreadable {PROGRESS_PROPERTY} {text:?}: {e}"),
                })
            })?,
            None => Progress::default(),
        };
        operator
            .restore(saved.state.as_deref(), &progress, Instant::now())
            .map_err(|e| sql_problem(format!("table {}: {e}", writer.label())))?;
        let (windows, bytes) = operator.state_size();
        tracing::info!(
            pipeline = %name,
            table = writer.label(),
            offsets = %absorbed.to_json(),
            open_windows = windows,
            state_bytes = bytes,
            watermark = ?progress.watermark.and_then(format_micros),
            "window state restored"
        );
        Ok(Self {
            operator,
            writer,
            skip: absorbed,
            checkpoint: saved.location,
            emitted: 0,
            pipeline: name,
        })
    }

    /// Offsets this branch had absorbed when it opened (until [`Self::resume_at`]).
    pub fn absorbed(&self) -> &Offsets {
        &self.skip
    }

    /// The source resumes at `resume`: only partitions where this branch is ahead need skipping.
    pub fn resume_at(&mut self, resume: &Offsets) {
        self.skip = self.skip.ahead_of(resume);
    }

    /// The source has handed on everything below `progress`.
    pub fn progressed(&mut self, progress: &Offsets) {
        self.skip.drop_reached(progress);
    }

    /// `namespace.table` of the metrics table.
    pub fn label(&self) -> &str {
        self.writer.label()
    }

    /// Takes parsed valid rows (with `_partition`, `_offset`) of one micro-batch: rows at or past
    /// this branch's offsets are sorted by the watermark, on-time ones folded into the state.
    /// Returns the rows that are late or have no event time, for the dead letter queue.
    pub async fn take(
        &mut self,
        valid: &RecordBatch,
        now: Instant,
    ) -> Result<Sorted, PipelineError> {
        let rows = super::unabsorbed(valid, &self.skip).map_err(|e| self.window_err(e.into()))?;
        let sorted = self
            .operator
            .sort_and_observe(&rows, now)
            .map_err(|e| self.window_err(e))?;
        self.operator
            .absorb(&sorted.on_time)
            .await
            .map_err(|e| self.window_err(e))?;
        Ok(sorted)
    }

    /// Moves the watermark and writes the windows it has passed.
    pub async fn advance(
        &mut self,
        assigned: &BTreeSet<i32>,
        at_end: &BTreeSet<i32>,
        now: Instant,
    ) -> Result<(), PipelineError> {
        let closed = self
            .operator
            .advance(assigned.iter().map(|p| (*p, at_end.contains(p))), now)
            .await
            .map_err(|e| self.window_err(e))?;
        self.write(closed).await
    }

    /// Writes every open window (backfills); the watermark moves past them.
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

    /// Checkpoints the open windows, then commits the closed ones with `offsets` and a pointer
    /// to that checkpoint, then deletes the checkpoint the previous snapshot pointed to.
    pub async fn commit(&mut self, offsets: &Offsets) -> Result<CommitStats, PipelineError> {
        let state = self.operator.checkpoint().await;
        let state = state.map_err(|e| self.window_err(e))?;
        let sink_err = |source| PipelineError::Sink {
            pipeline: self.pipeline.clone(),
            source,
        };
        let path = checkpoint::save(&self.writer, state)
            .await
            .map_err(sink_err)?;
        let progress = serde_json::to_string(&self.operator.progress()).unwrap_or_default();
        let stats = self
            .writer
            .commit_with(
                offsets,
                vec![
                    (CHECKPOINT_PROPERTY.to_string(), path.clone()),
                    (PROGRESS_PROPERTY.to_string(), progress),
                ],
            )
            .await
            .map_err(sink_err)?;
        if let Some(previous) = self.checkpoint.replace(path.clone()) {
            if previous != path {
                checkpoint::remove(&self.writer, &previous).await;
            }
        }
        self.emitted = 0;
        Ok(stats)
    }

    /// The watermark in microseconds since the epoch.
    pub fn watermark_micros(&self) -> Option<i64> {
        self.operator.watermark()
    }

    /// Open windows, state bytes and the watermark, for the commit log line.
    pub fn describe(&self) -> (usize, usize, Option<String>) {
        let (windows, bytes) = self.operator.state_size();
        (
            windows,
            bytes,
            self.operator.watermark().and_then(format_micros),
        )
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

    fn window_err(&self, source: WindowError) -> PipelineError {
        PipelineError::Window {
            pipeline: self.pipeline.clone(),
            source,
        }
    }
}

/// RFC 3339 form of an event time in microseconds.
fn format_micros(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}
