//! The window operator: parsed events in, closed windows out. Per micro-batch it sorts rows into
//! on time / late (their window was already emitted) / untimed, folds the on-time rows into
//! partial states, moves the watermark and finishes the windows it has passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, Int32Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;

use crate::common::records::{self, OFFSET, PARTITION};
use crate::common::Selection;

use super::aggregate::SplitAggregate;
use super::bounds::event_times;
use super::keys::KeyPartitions;
use super::state::WindowState;
use super::watermark::{Micros, PartitionTime, WatermarkTracker};
use super::WindowSpec;

/// A window's state is reduced to one row per group once it holds more batches than this.
const MAX_FRAGMENTS: usize = 8;

/// Errors of the window operator.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// Arrow failed on a batch (a column missing or of an unexpected type).
    #[error("window: a batch of parsed rows")]
    Arrow(#[from] ArrowError),
    /// A phase of the metrics SQL failed.
    #[error("window: running a phase of the metrics SQL")]
    Sql(#[from] DataFusionError),
    /// The metrics SQL's shape cannot be run window by window.
    #[error("{0}")]
    Unsupported(String),
    /// A checkpoint does not fit the current metrics SQL.
    #[error("window state checkpoint")]
    Checkpoint(#[source] ArrowError),
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

/// Incremental tumbling-window aggregation of the metrics SQL, with the open-window state kept
/// per source partition so that it moves with the partition between runners.
pub struct WindowOperator {
    split: SplitAggregate,
    /// Open-window state per held source partition.
    states: BTreeMap<i32, WindowState>,
    tracker: WatermarkTracker,
    keys: KeyPartitions,
    size: Micros,
    lateness: Micros,
    time_column: String,
}

impl WindowOperator {
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
        let keys = KeyPartitions::new(
            split.state_schema(),
            split.group_columns(),
            split.window_column(),
        )?;
        Ok(Self {
            split,
            states: BTreeMap::new(),
            tracker: WatermarkTracker::new(allowed_lateness, idle_timeout),
            keys,
            size: spec.size.as_micros() as Micros,
            lateness: allowed_lateness.as_micros() as Micros,
            time_column: spec.time_column.clone(),
        })
    }

    /// Sorts parsed rows by their partition's watermark (see [`Self::sort_and_observe`]) and
    /// folds the on-time ones into the state; returns the sorted rows (late and untimed ones
    /// become dead letters) with only the columns the window reads and their coordinates.
    pub async fn take(
        &mut self,
        rows: &Selection,
        earliest: Micros,
        now: Instant,
    ) -> Result<Sorted, WindowError> {
        let rows = rows.columns(&self.columns())?.to_batch()?;
        let sorted = self.sort_and_observe(&rows, earliest, now)?;
        self.absorb(&sorted.on_time).await?;
        Ok(sorted)
    }

    /// The columns of parsed rows the window reads: the metrics SQL's, the time column and the
    /// partition and offset (late rows become dead letters by them; the batch's messages are
    /// all of one topic).
    fn columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = self.split.read_columns().collect();
        for column in [self.time_column.as_str(), PARTITION, OFFSET] {
            if !columns.contains(&column) {
                columns.push(column);
            }
        }
        columns
    }

    /// Sorts parsed rows (with `_partition`, in offset order per partition) by their
    /// partition's watermark as it stood when each row arrived: the watermark moves row by row
    /// within a batch, so which events are late depends only on the partition's own sequence,
    /// never on how it was cut into batches or which runner read it. A row before `earliest`
    /// (see [`super::bounds`]) is late whatever the watermark, and is not the partition's
    /// progress. Then records the highest event time per source partition.
    pub fn sort_and_observe(
        &mut self,
        rows: &RecordBatch,
        earliest: Micros,
        now: Instant,
    ) -> Result<Sorted, WindowError> {
        let times = event_times(rows, &self.time_column)?;
        let partitions = records::partitions(rows)?;
        let mut on_time = Vec::with_capacity(times.len());
        let mut late = Vec::with_capacity(times.len());
        // Few partitions per batch: a short list beats a map lookup per row.
        let mut clocks: Vec<(i32, PartitionTime)> = Vec::new();
        for (partition, time) in partitions.iter().zip(times.iter()) {
            let partition = partition.unwrap_or_default();
            let index = match clocks.iter().position(|(p, _)| *p == partition) {
                Some(index) => index,
                None => {
                    clocks.push((partition, self.tracker.time(partition)));
                    clocks.len() - 1
                }
            };
            let clock = &mut clocks[index].1;
            let watermark = clock.watermark_under(self.lateness);
            let stale = time.is_some_and(|t| t < earliest);
            let is_late = stale
                || match (time, watermark) {
                    (Some(t), Some(w)) => self.window_start(t) + self.size <= w,
                    _ => false,
                };
            on_time.push(time.is_some() && !is_late);
            late.push(is_late);
            if let Some(t) = time.filter(|_| !stale) {
                clock.max_event = Some(clock.max_event.map_or(t, |m| m.max(t)));
            }
        }
        let untimed = arrow::compute::is_null(&times)?;
        let sorted = Sorted {
            on_time: filter_record_batch(rows, &BooleanArray::from(on_time))?,
            late: filter_record_batch(rows, &BooleanArray::from(late))?,
            untimed: filter_record_batch(rows, &untimed)?,
        };
        for (partition, time) in clocks {
            if let Some(max) = time.max_event {
                self.tracker.observe(partition, max, now);
            }
        }
        Ok(sorted)
    }

    /// Folds on-time rows into the partial states of their windows, in their partition's state.
    pub async fn absorb(&mut self, on_time: &RecordBatch) -> Result<(), WindowError> {
        if on_time.num_rows() == 0 {
            return Ok(());
        }
        let events = self.split.reads(on_time)?;
        let partitions = records::partitions(on_time)?;
        for (partition, rows) in by_partition(&events, &partitions)? {
            let partials = self.split.partial(vec![rows]).await?;
            self.keys.note(partition, &partials)?;
            let state = self.state_of(partition);
            state.add(&partials)?;
            if !state.fragmented(MAX_FRAGMENTS).is_empty() {
                self.compact(partition).await?;
            }
        }
        Ok(())
    }

    /// Moves the watermarks of the held partitions (`at_end` says which are read to their end)
    /// and returns the final rows of every window they have passed.
    pub async fn advance(
        &mut self,
        at_end: impl Fn(i32) -> bool,
        now: Instant,
    ) -> Result<Vec<RecordBatch>, WindowError> {
        self.tracker.advance(at_end, now);
        let mut batches = Vec::new();
        for (partition, state) in &mut self.states {
            let Some(watermark) = self.tracker.partition_watermark(*partition) else {
                continue;
            };
            for start in state.closable(watermark, self.size) {
                batches.extend(state.take(start));
            }
        }
        self.finish(batches).await
    }

    /// Final rows of every open window (for backfills that must not leave windows behind).
    /// Emitted windows are final, so each partition's watermark moves past them: later events
    /// for them are late, not a second row for the same window.
    pub async fn flush(&mut self) -> Result<Vec<RecordBatch>, WindowError> {
        let mut batches = Vec::new();
        for (partition, state) in &mut self.states {
            let open = state.open_windows();
            if let Some(last) = open.last() {
                let mut time = self.tracker.time(*partition);
                let end = last + self.size;
                time.watermark = Some(time.watermark.map_or(end, |w| w.max(end)));
                self.tracker.restore(*partition, time, Instant::now());
            }
            for start in open {
                batches.extend(state.take(start));
            }
        }
        self.finish(batches).await
    }

    async fn finish(&mut self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, WindowError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.split.finish(batches).await?)
    }

    /// Merges every held partition's open windows' partial states into one row per group.
    pub async fn compact_all(&mut self) -> Result<(), WindowError> {
        for partition in self.partitions() {
            self.compact(partition).await?;
        }
        Ok(())
    }

    /// Merges a partition's open windows' partial states into one row per group.
    async fn compact(&mut self, partition: i32) -> Result<(), WindowError> {
        let state = self.state_of(partition);
        let fragmented = state.fragmented(1);
        if fragmented.is_empty() {
            return Ok(());
        }
        let batches = fragmented
            .iter()
            .flat_map(|start| state.take(*start))
            .collect();
        let reduced = self.split.reduce(batches).await?;
        self.state_of(partition).add(&reduced)?;
        Ok(())
    }

    /// A partition's open-window state, compacted, as an Arrow IPC file, with its event-time
    /// progress.
    pub async fn checkpoint(
        &mut self,
        partition: i32,
    ) -> Result<(Vec<u8>, PartitionTime), WindowError> {
        self.compact(partition).await?;
        let bytes = self.state_of(partition).to_ipc()?;
        Ok((bytes, self.tracker.time(partition)))
    }

    /// Takes over a partition: its state and event-time progress from its checkpoint (none for
    /// a partition never checkpointed), replacing whatever this operator held for it.
    pub fn restore(
        &mut self,
        partition: i32,
        state: Option<&[u8]>,
        time: PartitionTime,
        now: Instant,
    ) -> Result<(), WindowError> {
        let mut restored = WindowState::new(
            self.split.state_schema().clone(),
            self.split.window_column(),
        );
        if let Some(bytes) = state {
            let batches = restored
                .restore_ipc(bytes, self.split.group_columns())
                .map_err(WindowError::Checkpoint)?;
            self.keys.note(partition, &batches)?;
        }
        self.states.insert(partition, restored);
        self.tracker.restore(partition, time, now);
        Ok(())
    }

    /// Lets a partition go (it moved to another runner): its state and progress are dropped.
    pub fn release(&mut self, partition: i32) {
        self.states.remove(&partition);
        self.tracker.release(partition);
        self.keys.release(partition);
    }

    /// The partitions whose state this operator holds.
    pub fn partitions(&self) -> Vec<i32> {
        self.states.keys().copied().collect()
    }

    /// Open windows and the bytes their state holds, over all held partitions.
    pub fn state_size(&self) -> (usize, usize) {
        self.states
            .values()
            .fold((0, 0), |(windows, bytes), state| {
                (
                    windows + state.open_windows().len(),
                    bytes + state.memory_bytes(),
                )
            })
    }

    /// Partial-state rows held.
    pub fn state_rows(&self) -> usize {
        self.states.values().map(WindowState::rows).sum()
    }

    /// Whether a partition whose checkpoint records `max_event` and `watermark` may still have
    /// open windows: the window of its latest event stays open until the watermark reaches its
    /// end, and every other window ends before it.
    pub fn has_open_windows(&self, max_event: Option<Micros>, watermark: Option<Micros>) -> bool {
        let Some(latest) = max_event else {
            return false;
        };
        let end = self.window_start(latest) + self.size;
        watermark.is_none_or(|w| w < end)
    }

    /// The runner's watermark: the lowest of its partitions' watermarks.
    pub fn watermark(&self) -> Option<Micros> {
        self.tracker.current()
    }

    fn state_of(&mut self, partition: i32) -> &mut WindowState {
        let (schema, column) = (
            self.split.state_schema().clone(),
            self.split.window_column(),
        );
        self.states
            .entry(partition)
            .or_insert_with(|| WindowState::new(schema, column))
    }

    /// Window start of an event time, as `date_bin` computes it (origin at the epoch).
    fn window_start(&self, time: Micros) -> Micros {
        time - time.rem_euclid(self.size)
    }
}

/// The rows of `batch` per source partition (one slice when the batch holds one partition).
fn by_partition(
    batch: &RecordBatch,
    partitions: &Int32Array,
) -> Result<Vec<(i32, RecordBatch)>, ArrowError> {
    let mut distinct: Vec<i32> = partitions.iter().flatten().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if let [only] = distinct[..] {
        return Ok(vec![(only, batch.clone())]);
    }
    distinct
        .into_iter()
        .map(|p| {
            let mask: BooleanArray = partitions.iter().map(|v| Some(v == Some(p))).collect();
            Ok((p, filter_record_batch(batch, &mask)?))
        })
        .collect()
}
