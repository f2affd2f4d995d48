//! The window operator: parsed events in, closed windows out. Per micro-batch it sorts rows into
//! on time / late (their window was already emitted) / untimed, folds the on-time rows into
//! partial states, moves the watermark and finishes the windows it has passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, BooleanArray, Int32Array};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Int32Type, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};

use super::aggregate::SplitAggregate;
use super::state::WindowState;
use super::watermark::{Micros, WatermarkTracker};
use super::WindowSpec;

/// A window's state is reduced to one row per group once it holds more batches than this.
const MAX_FRAGMENTS: usize = 8;

/// Errors of the window operator.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// Arrow failed on a batch (a column missing or of an unexpected type).
    #[error("window: {0}")]
    Arrow(#[from] ArrowError),
    /// A phase of the metrics SQL failed.
    #[error("window: running the metrics SQL: {0}")]
    Sql(#[from] DataFusionError),
    /// The metrics SQL's shape cannot be run window by window.
    #[error("{0}")]
    Unsupported(String),
    /// A checkpoint does not fit the current metrics SQL.
    #[error("window state checkpoint: {0}")]
    Checkpoint(String),
}

/// A micro-batch's parsed rows sorted by their relation to the watermark.
#[derive(Debug)]
pub struct Sorted {
    /// Rows whose window is still open.
    pub on_time: RecordBatch,
    /// Rows whose window the watermark has passed (already emitted, or never to be).
    pub late: RecordBatch,
    /// Rows without an event time.
    pub untimed: RecordBatch,
}

/// Event-time progress as kept beside a state checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The pipeline's watermark, microseconds since the epoch.
    pub watermark: Option<Micros>,
    /// Highest event time seen per source partition, microseconds since the epoch.
    pub partitions: BTreeMap<i32, Micros>,
}

/// Incremental tumbling-window aggregation of the metrics SQL.
pub struct WindowOperator {
    split: SplitAggregate,
    state: WindowState,
    tracker: WatermarkTracker,
    size: Micros,
    time_column: String,
    events_schema: SchemaRef,
}

impl WindowOperator {
    /// Splits a planned metrics SQL into its aggregate phases and builds an operator with
    /// empty state (also how `check` proves the SQL can run incrementally).
    pub async fn for_planned(
        ctx: &datafusion::prelude::SessionContext,
        planned: &crate::engine::PlannedSql,
        allowed_lateness: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, WindowError> {
        let split = SplitAggregate::new(ctx, &planned.metrics, planned.events_slot.clone())
            .await
            .map_err(|e| match e {
                DataFusionError::Plan(message) => WindowError::Unsupported(message),
                other => WindowError::Sql(other),
            })?;
        Self::new(
            split,
            &planned.window,
            planned.events_schema.clone(),
            allowed_lateness,
            idle_timeout,
        )
    }

    /// An operator with empty state for `split`'s SQL, windows of `spec`, and the pipeline's
    /// lateness and idle timeout; `events_schema` is the metrics SQL's input table.
    pub fn new(
        split: SplitAggregate,
        spec: &WindowSpec,
        events_schema: SchemaRef,
        allowed_lateness: Duration,
        idle_timeout: Duration,
    ) -> Result<Self, WindowError> {
        if events_schema.field_with_name(&spec.time_column).is_err() {
            return Err(WindowError::Unsupported(format!(
                "the window's time column `{}` is not a column of the parsed events",
                spec.time_column
            )));
        }
        let state = WindowState::new(split.state_schema().clone(), split.window_column());
        Ok(Self {
            split,
            state,
            tracker: WatermarkTracker::new(allowed_lateness, idle_timeout),
            size: spec.size.as_micros() as Micros,
            time_column: spec.time_column.clone(),
            events_schema,
        })
    }

    /// Sorts parsed rows (with `_partition`) by the watermark as it stood before them, then
    /// records their highest event time per source partition.
    pub fn sort_and_observe(
        &mut self,
        rows: &RecordBatch,
        now: Instant,
    ) -> Result<Sorted, WindowError> {
        let times = self.event_times(rows)?;
        let watermark = self.tracker.current();
        let mut on_time = Vec::with_capacity(times.len());
        let mut late = Vec::with_capacity(times.len());
        for time in times.iter() {
            let is_late = match (time, watermark) {
                (Some(t), Some(w)) => self.window_start(t) + self.size <= w,
                _ => false,
            };
            on_time.push(time.is_some() && !is_late);
            late.push(is_late);
        }
        let untimed = arrow::compute::is_null(&times)?;
        let sorted = Sorted {
            on_time: filter_record_batch(rows, &BooleanArray::from(on_time))?,
            late: filter_record_batch(rows, &BooleanArray::from(late))?,
            untimed: filter_record_batch(rows, &untimed)?,
        };
        let partitions = rows
            .column_by_name("_partition")
            .ok_or_else(|| ArrowError::SchemaError("parsed rows lack `_partition`".into()))?;
        let partitions = cast(partitions, &DataType::Int32)?;
        let partitions: &Int32Array = partitions.as_primitive::<Int32Type>();
        let mut highest: BTreeMap<i32, Micros> = BTreeMap::new();
        for (partition, time) in partitions.iter().zip(times.iter()) {
            if let (Some(p), Some(t)) = (partition, time) {
                let entry = highest.entry(p).or_insert(t);
                *entry = (*entry).max(t);
            }
        }
        for (partition, time) in highest {
            self.tracker.observe(partition, time, now);
        }
        Ok(sorted)
    }

    /// Folds on-time rows into the partial states of their windows.
    pub async fn absorb(&mut self, on_time: &RecordBatch) -> Result<(), WindowError> {
        if on_time.num_rows() == 0 {
            return Ok(());
        }
        let events = on_time.project(
            &self
                .events_schema
                .fields()
                .iter()
                .map(|f| on_time.schema().index_of(f.name()))
                .collect::<Result<Vec<_>, _>>()?,
        )?;
        let events = RecordBatch::try_new(self.events_schema.clone(), events.columns().to_vec())?;
        let partials = self.split.partial(vec![events]).await?;
        self.state.add(&partials)?;
        if !self.state.fragmented(MAX_FRAGMENTS).is_empty() {
            self.compact().await?;
        }
        Ok(())
    }

    /// Moves the watermark over the assigned partitions (each with whether it is read to its
    /// end) and returns the final rows of every window it has passed.
    pub async fn advance(
        &mut self,
        assigned: impl IntoIterator<Item = (i32, bool)>,
        now: Instant,
    ) -> Result<Vec<RecordBatch>, WindowError> {
        let Some(watermark) = self.tracker.advance(assigned, now) else {
            return Ok(Vec::new());
        };
        let closable = self.state.closable(watermark, self.size);
        self.finish(closable).await
    }

    /// Final rows of every open window (for backfills that must not leave windows behind).
    /// Emitted windows are final, so the watermark moves past them: later events for them
    /// are late, not a second row for the same window.
    pub async fn flush(&mut self) -> Result<Vec<RecordBatch>, WindowError> {
        let open = self.state.open_windows();
        if let Some(last) = open.last() {
            self.tracker.restore_watermark(last + self.size);
        }
        self.finish(open).await
    }

    async fn finish(&mut self, starts: Vec<Micros>) -> Result<Vec<RecordBatch>, WindowError> {
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let batches: Vec<RecordBatch> = starts
            .iter()
            .flat_map(|start| self.state.take(*start))
            .collect();
        Ok(self.split.finish(batches).await?)
    }

    /// The watermark and per-partition event times, for checkpoints.
    pub fn progress(&self) -> Progress {
        Progress {
            watermark: self.tracker.current(),
            partitions: self.tracker.max_events(),
        }
    }

    /// Merges every open window's partial states into one row per group.
    pub async fn compact(&mut self) -> Result<(), WindowError> {
        let fragmented = self.state.fragmented(1);
        if fragmented.is_empty() {
            return Ok(());
        }
        let batches = fragmented
            .iter()
            .flat_map(|start| self.state.take(*start))
            .collect();
        let reduced = self.split.reduce(batches).await?;
        self.state.add(&reduced)?;
        Ok(())
    }

    /// Open-window state, compacted, as an Arrow IPC file.
    pub async fn checkpoint(&mut self) -> Result<Vec<u8>, WindowError> {
        self.compact().await?;
        Ok(self.state.to_ipc()?)
    }

    /// Restores state and event-time progress from a checkpoint.
    pub fn restore(
        &mut self,
        state: Option<&[u8]>,
        progress: &Progress,
        now: Instant,
    ) -> Result<(), WindowError> {
        if let Some(bytes) = state {
            self.state
                .restore_ipc(bytes, self.split.group_columns())
                .map_err(|e| WindowError::Checkpoint(e.to_string()))?;
        }
        for (partition, time) in &progress.partitions {
            self.tracker.restore(*partition, *time, now);
        }
        if let Some(watermark) = progress.watermark {
            self.tracker.restore_watermark(watermark);
        }
        Ok(())
    }

    /// Open windows and the bytes their state holds.
    pub fn state_size(&self) -> (usize, usize) {
        (self.state.open_windows().len(), self.state.memory_bytes())
    }

    /// Partial-state rows held.
    pub fn state_rows(&self) -> usize {
        self.state.rows()
    }

    /// The current watermark.
    pub fn watermark(&self) -> Option<Micros> {
        self.tracker.current()
    }

    /// Window start of an event time, as `date_bin` computes it (origin at the epoch).
    fn window_start(&self, time: Micros) -> Micros {
        time - time.rem_euclid(self.size)
    }

    fn event_times(
        &self,
        rows: &RecordBatch,
    ) -> Result<arrow::array::TimestampMicrosecondArray, WindowError> {
        let column = rows.column_by_name(&self.time_column).ok_or_else(|| {
            ArrowError::SchemaError(format!("parsed rows lack `{}`", self.time_column))
        })?;
        let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        Ok(micros.as_primitive::<TimestampMicrosecondType>().clone())
    }
}
