//! Open-window state: per window start, the partial aggregate states of its groups (never the
//! raw events), compacted as it grows, closed when the watermark passes the window's end, and
//! written to / read from Arrow IPC for checkpoints.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, AsArray, BooleanArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;

use super::watermark::Micros;

/// Partial states of the open windows, keyed by window start (microseconds since the epoch).
#[derive(Debug, Clone)]
pub struct WindowState {
    schema: SchemaRef,
    window_column: usize,
    windows: BTreeMap<Micros, Vec<RecordBatch>>,
}

impl WindowState {
    /// Empty state for partial-state batches of `schema` whose window start is `window_column`.
    pub fn new(schema: SchemaRef, window_column: usize) -> Self {
        Self {
            schema,
            window_column,
            windows: BTreeMap::new(),
        }
    }

    /// Adds partial-state batches, filed under their window starts.
    pub fn add(&mut self, batches: &[RecordBatch]) -> Result<(), ArrowError> {
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let starts = window_starts(batch.column(self.window_column))?;
            let mut distinct: Vec<Micros> = starts.values().iter().copied().collect();
            distinct.sort_unstable();
            distinct.dedup();
            for start in distinct {
                let mask: BooleanArray = starts.iter().map(|v| Some(v == Some(start))).collect();
                let part = filter_record_batch(batch, &mask)?;
                self.windows.entry(start).or_default().push(part);
            }
        }
        Ok(())
    }

    /// Window starts whose state has more than `max_batches` batches (candidates for a reduce).
    pub fn fragmented(&self, max_batches: usize) -> Vec<Micros> {
        self.windows
            .iter()
            .filter(|(_, batches)| batches.len() > max_batches)
            .map(|(start, _)| *start)
            .collect()
    }

    /// Takes a window's batches out (to reduce or to close it).
    pub fn take(&mut self, start: Micros) -> Vec<RecordBatch> {
        self.windows.remove(&start).unwrap_or_default()
    }

    /// Puts a window's (reduced) batches back.
    pub fn put(&mut self, start: Micros, batches: Vec<RecordBatch>) {
        if !batches.is_empty() {
            self.windows.insert(start, batches);
        }
    }

    /// Starts of the windows whose end (`start + size`) is at or before `watermark`.
    pub fn closable(&self, watermark: Micros, size: Micros) -> Vec<Micros> {
        self.windows
            .keys()
            .take_while(|start| **start + size <= watermark)
            .copied()
            .collect()
    }

    /// Starts of every open window.
    pub fn open_windows(&self) -> Vec<Micros> {
        self.windows.keys().copied().collect()
    }

    /// Rows held (partial states), for memory accounting.
    pub fn rows(&self) -> usize {
        self.windows
            .values()
            .flatten()
            .map(RecordBatch::num_rows)
            .sum()
    }

    /// Bytes held by the state's Arrow buffers.
    pub fn memory_bytes(&self) -> usize {
        self.windows
            .values()
            .flatten()
            .map(RecordBatch::get_array_memory_size)
            .sum()
    }

    /// The whole state as an Arrow IPC file.
    pub fn to_ipc(&self) -> Result<Vec<u8>, ArrowError> {
        let mut buffer = Vec::new();
        let mut writer = FileWriter::try_new(&mut buffer, &self.schema)?;
        for batch in self.windows.values().flatten() {
            writer.write(batch)?;
        }
        writer.finish()?;
        drop(writer);
        Ok(buffer)
    }

    /// Replaces the state with the one in an Arrow IPC file written by [`Self::to_ipc`], possibly
    /// under an earlier version of the SQL: state columns are matched by name, and an aggregate
    /// the SQL has gained since starts empty (null state) in the windows already open. The
    /// first `group_columns` columns (the GROUP BY keys) must be unchanged. Returns the batches
    /// restored.
    pub fn restore_ipc(
        &mut self,
        bytes: &[u8],
        group_columns: usize,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        let reader = FileReader::try_new(Cursor::new(bytes), None)?;
        let saved = reader.schema();
        let mut sources = Vec::with_capacity(self.schema.fields().len());
        for (index, field) in self.schema.fields().iter().enumerate() {
            match saved.field_with_name(field.name()) {
                Ok(old) if old.data_type() == field.data_type() => {
                    sources.push(saved.index_of(field.name()).ok())
                }
                Ok(old) => {
                    return Err(changed_sql(format!(
                        "state column `{}` was {} and is now {}",
                        field.name(),
                        old.data_type(),
                        field.data_type()
                    )))
                }
                Err(_) if index < group_columns => {
                    return Err(changed_sql(format!(
                        "the GROUP BY key `{}` is new",
                        field.name()
                    )))
                }
                Err(_) => sources.push(None),
            }
        }
        self.windows.clear();
        let mut batches = Vec::new();
        for batch in reader {
            let batch = batch?;
            let columns = sources
                .iter()
                .zip(self.schema.fields())
                .map(|(source, field)| match source {
                    Some(i) => batch.column(*i).clone(),
                    None => new_null_array(field.data_type(), batch.num_rows()),
                })
                .collect();
            batches.push(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        self.add(&batches)?;
        Ok(batches)
    }

    /// Schema of the state batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

fn changed_sql(what: String) -> ArrowError {
    ArrowError::SchemaError(format!(
        "the open windows were saved under a different metrics SQL ({what}); finish them with the \
         previous SQL (`run --until-caught-up --flush-open-windows`), then switch to the new one"
    ))
}

/// Window starts of a state column as microseconds (any timestamp unit, any time zone).
fn window_starts(
    column: &Arc<dyn Array>,
) -> Result<arrow::array::TimestampMicrosecondArray, ArrowError> {
    let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    Ok(micros.as_primitive::<TimestampMicrosecondType>().clone())
}
