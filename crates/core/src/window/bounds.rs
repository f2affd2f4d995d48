//! How far an event's time may stray from the runner's clock.
//!
//! A partition's watermark follows the highest event time it has delivered, so one device with
//! a clock in 2099 would close every open window at once and make every later event late. An
//! event stamped more than `window.max_future` ahead of the clock is therefore rejected before
//! it reaches either table (dead letter `future timestamp: ...`), and the highest event time a
//! watermark can follow is the clock plus that bound.
//!
//! An event stamped more than `window.max_past` behind the clock is a valid event (it is
//! written to the events table) but late for the windows: the window it belongs to has long
//! been passed, even if this runner never saw the partition before, so it never opens a window
//! of its own and never counts as the partition's progress.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, BooleanArray, StringArray};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, SecondsFormat};

use super::watermark::Micros;
use crate::common::{Selection, ERROR_COLUMN};

/// Start of the dead letter reason of an event stamped too far ahead of the clock.
const FUTURE_REASON: &str = "future timestamp";

/// The configured distances an event time may have from the runner's clock.
#[derive(Debug, Clone, Copy)]
pub struct EventTimeBounds {
    max_future: Micros,
    max_past: Micros,
}

/// The bounds as of one reading of the runner's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeLimits {
    /// Events before this are late for the windows.
    pub earliest: Micros,
    /// Events after this are rejected.
    pub latest: Micros,
}

impl EventTimeBounds {
    /// Bounds from `window.max_future` and `window.max_past`.
    pub fn new(max_future: Duration, max_past: Duration) -> Self {
        let micros = |d: Duration| Micros::try_from(d.as_micros()).unwrap_or(Micros::MAX / 4);
        Self {
            max_future: micros(max_future),
            max_past: micros(max_past),
        }
    }

    /// The limits when the clock reads `clock` (microseconds since the epoch).
    pub fn at(&self, clock: Micros) -> TimeLimits {
        TimeLimits {
            earliest: clock.saturating_sub(self.max_past),
            latest: clock.saturating_add(self.max_future),
        }
    }

    /// The limits as of the runner's clock now.
    pub fn now(&self) -> TimeLimits {
        self.at(chrono::Utc::now().timestamp_micros())
    }
}

impl TimeLimits {
    /// Limits that let every event time through (for replays of a fixed history in tools).
    pub const UNBOUNDED: TimeLimits = TimeLimits {
        earliest: Micros::MIN,
        latest: Micros::MAX,
    };

    /// Which of the chosen rows have their `time_column` after `latest` (a bit per row of the
    /// whole batch, `None` when none has), and those rows with `_error` set to their reason.
    pub fn future(
        &self,
        rows: &Selection,
        time_column: &str,
    ) -> Result<(Option<BooleanArray>, RecordBatch), ArrowError> {
        let batch = rows.batch();
        let times = event_times(batch, time_column)?;
        let after: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t > self.latest)))
            .collect();
        let future = match rows.keep() {
            Some(keep) => arrow::compute::and(keep, &after)?,
            None => after,
        };
        if future.true_count() == 0 {
            return Ok((None, batch.slice(0, 0)));
        }
        let rejected = filter_record_batch(batch, &future)?;
        let rejected_times = filter_record_batch(
            &RecordBatch::try_from_iter([("t", Arc::new(times) as _)])?,
            &future,
        )?;
        let reasons: StringArray = rejected_times
            .column(0)
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .map(|t| t.map(future_reason))
            .collect();
        Ok((Some(future), with_error(&rejected, reasons)?))
    }
}

/// `future timestamp: 2099-01-01T00:00:00.000000Z`.
fn future_reason(time: Micros) -> String {
    let text = DateTime::from_timestamp_micros(time)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("{time} µs since the epoch"));
    format!("{FUTURE_REASON}: {text}")
}

/// `rows` with their `_error` column replaced by `reasons`.
fn with_error(rows: &RecordBatch, reasons: StringArray) -> Result<RecordBatch, ArrowError> {
    let index = rows.schema().index_of(ERROR_COLUMN)?;
    let mut columns = rows.columns().to_vec();
    columns[index] = cast(&reasons, rows.schema().field(index).data_type())?;
    RecordBatch::try_new(rows.schema(), columns)
}

/// The event-time column of parsed rows in microseconds (the unit of the windows).
pub fn event_times(
    rows: &RecordBatch,
    time_column: &str,
) -> Result<arrow::array::TimestampMicrosecondArray, ArrowError> {
    let column = rows
        .column_by_name(time_column)
        .ok_or_else(|| ArrowError::SchemaError(format!("parsed rows lack `{time_column}`")))?;
    let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    Ok(micros.as_primitive::<TimestampMicrosecondType>().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};

    const S: Micros = 1_000_000;

    fn rows(times: &[Option<Micros>]) -> RecordBatch {
        let n = times.len() as i64;
        RecordBatch::try_from_iter([
            (
                "timestamp",
                Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")) as _,
            ),
            ("_offset", Arc::new(Int64Array::from_iter_values(0..n)) as _),
            (
                ERROR_COLUMN,
                Arc::new(StringArray::from(vec![None::<&str>; times.len()])) as _,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn limits_follow_the_clock() {
        let bounds = EventTimeBounds::new(Duration::from_secs(300), Duration::from_secs(3600));
        assert_eq!(
            bounds.at(10_000 * S),
            TimeLimits {
                earliest: 6_400 * S,
                latest: 10_300 * S
            }
        );
    }

    #[test]
    fn future_rows_are_split_off_with_their_reason() {
        let limits = EventTimeBounds::new(Duration::from_secs(300), Duration::from_secs(3600))
            .at(1_700_000_000 * S);
        let batch = rows(&[
            Some(1_700_000_000 * S),
            Some(1_700_000_300 * S),
            Some(1_700_000_301 * S),
            None,
            Some(4_070_908_800 * S),
        ]);
        let offsets = |b: &RecordBatch| -> Vec<i64> {
            b.column(1)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        let (marked, future) = limits
            .future(&Selection::all(batch.clone()), "timestamp")
            .unwrap();
        let marked = marked.expect("future rows");
        assert_eq!(
            marked.iter().flatten().collect::<Vec<_>>(),
            [false, false, true, false, true],
            "at the bound and untimed stay"
        );
        assert_eq!(offsets(&future), [2, 4]);
        let reasons: Vec<&str> = future
            .column(2)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(
            reasons,
            [
                "future timestamp: 2023-11-14T22:18:21.000000Z",
                "future timestamp: 2099-01-01T00:00:00.000000Z"
            ]
        );
        let (marked, future) = limits
            .future(&Selection::all(rows(&[Some(0)])), "timestamp")
            .unwrap();
        assert_eq!((marked, future.num_rows()), (None, 0));

        // Only chosen rows are judged: a row not chosen is never a future one.
        let chosen = Selection::of(
            batch.clone(),
            BooleanArray::from(vec![true, true, true, true, false]),
        )
        .unwrap();
        let (marked, future) = limits.future(&chosen, "timestamp").unwrap();
        assert_eq!(
            marked
                .expect("one future row")
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            [false, false, true, false, false]
        );
        assert_eq!(offsets(&future), [2]);
    }
}
