//! Rejected rows to dead letter records: the SQL's reason plus the raw message it came from.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;

use crate::common::records::{self, KafkaRecords};
use crate::common::ERROR_COLUMN;
use crate::dlq::{DeadLetter, SourceCoordinates};
use crate::engine::FailedRow;
use crate::source::RawRecord;

use crate::dlq::record::{LATE_REASON, UNTIMED_REASON};

/// Why a message goes to the dead letter queue. It becomes text only in the dead letter record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The reason in the rows' `_error` column: the parsing SQL's rules, and the clock's bound
    /// on event times (`future timestamp: ...`), which writes there too.
    Error,
    /// A valid event whose window its partition's watermark had passed when it arrived (it is
    /// in the events table).
    Late,
    /// A valid event whose window's time column is NULL (it is in the events table).
    Untimed,
    /// A payload that is not UTF-8: it never reached the SQL.
    InvalidUtf8,
}

impl Rejection {
    /// The reason the record gives, for every rejection but [`Rejection::Error`] (whose reason
    /// is each row's own).
    pub fn fixed_reason(self) -> Option<&'static str> {
        match self {
            Rejection::Error => None,
            Rejection::Late => Some(LATE_REASON),
            Rejection::Untimed => Some(UNTIMED_REASON),
            Rejection::InvalidUtf8 => Some("invalid utf-8"),
        }
    }
}

/// A dead letter record, the key of its source message, and why it was rejected.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The record the dead letter topic gets.
    pub letter: DeadLetter,
    /// The source message's key, which the dead letter keeps.
    pub key: Option<Vec<u8>>,
    /// Why.
    pub rejection: Rejection,
}

/// Dead letters for rejected parsed rows, with payload, key and timestamp looked up in the
/// micro-batch they came from by (partition, offset).
pub fn from_rejected_rows(
    rejected: &RecordBatch,
    rejection: Rejection,
    input: &RecordBatch,
    pipeline: &str,
    failed_at: &str,
) -> Result<Vec<Rejected>, arrow::error::ArrowError> {
    if rejected.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let errors = match rejection {
        Rejection::Error => Some(cast(
            rejected.column_by_name(ERROR_COLUMN).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!(
                    "parsing output lacks `{ERROR_COLUMN}`"
                ))
            })?,
            &DataType::Utf8,
        )?),
        _ => None,
    };
    let errors = errors.as_ref().map(|e| e.as_string::<i32>());
    // By partition and offset alone: the window hands its late rows on without `_topic`.
    let (partitions, offsets) = (
        &records::partitions(rejected)?,
        &records::offsets(rejected)?,
    );

    let records = KafkaRecords::new(input)?;
    let runs = OffsetRuns::of(&records);
    let mut letters = Vec::with_capacity(rejected.num_rows());
    for i in 0..rejected.num_rows() {
        let Some(row) = runs.row(partitions.value(i), offsets.value(i)) else {
            // The SQL invented a row that matches no message: report it rather than lose it.
            tracing::warn!(
                partition = partitions.value(i),
                offset = offsets.value(i),
                "a rejected row matches no message of the batch"
            );
            continue;
        };
        let reason = match (rejection.fixed_reason(), errors) {
            (Some(fixed), _) => fixed,
            (None, Some(errors)) if errors.is_valid(i) => errors.value(i),
            (None, _) => "rejected",
        };
        letters.push(input_dead_letter(
            &records, row, rejection, reason, pipeline, failed_at,
        ));
    }
    Ok(letters)
}

/// The rows of a micro-batch as runs of consecutive offsets of one partition, sorted: a batch
/// holds a few long ones, so finding the message of a rejected row costs a binary search, where
/// probing a map for every input row was most of the dead letters' cost.
struct OffsetRuns {
    runs: Vec<OffsetRun>,
}

/// Rows `first_row..first_row + len` hold offsets `first_offset..` of `partition`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct OffsetRun {
    partition: i32,
    first_offset: i64,
    first_row: usize,
    len: usize,
}

impl OffsetRuns {
    fn of(records: &KafkaRecords<'_>) -> Self {
        let mut runs: Vec<OffsetRun> = Vec::new();
        for row in 0..records.len() {
            let (partition, offset) = (records.partition(row), records.offset(row));
            match runs.last_mut() {
                Some(run)
                    if run.partition == partition
                        && run.first_offset.checked_add(run.len as i64) == Some(offset) =>
                {
                    run.len += 1;
                }
                _ => runs.push(OffsetRun {
                    partition,
                    first_offset: offset,
                    first_row: row,
                    len: 1,
                }),
            }
        }
        runs.sort_unstable();
        Self { runs }
    }

    /// The row holding `offset` of `partition`, if any.
    fn row(&self, partition: i32, offset: i64) -> Option<usize> {
        let after = self
            .runs
            .partition_point(|run| (run.partition, run.first_offset) <= (partition, offset));
        let run = self.runs.get(after.checked_sub(1)?)?;
        let within = usize::try_from(offset - run.first_offset).ok()?;
        (run.partition == partition && within < run.len).then_some(run.first_row + within)
    }
}

/// The dead letter of message `row` of the micro-batch.
fn input_dead_letter(
    records: &KafkaRecords<'_>,
    row: usize,
    rejection: Rejection,
    reason: &str,
    pipeline: &str,
    failed_at: &str,
) -> Rejected {
    let raw = RawRecord {
        topic: records.topic(row).to_string(),
        partition: records.partition(row),
        offset: records.offset(row),
        timestamp_ms: records.timestamp_ms(row),
        key: records.key(row).map(<[u8]>::to_vec),
        payload: Vec::new(),
    };
    let payload = records.value(row).as_bytes();
    dead_letter(&raw, payload, rejection, reason, pipeline, failed_at)
}

/// Dead letters for the input rows the parsing SQL failed on by themselves (their reason is the
/// SQL's error).
pub fn from_failed_rows(
    failed: &[FailedRow],
    input: &RecordBatch,
    pipeline: &str,
    failed_at: &str,
) -> Result<Vec<Rejected>, arrow::error::ArrowError> {
    if failed.is_empty() {
        return Ok(Vec::new());
    }
    let records = KafkaRecords::new(input)?;
    Ok(failed
        .iter()
        .map(|failed| {
            let reason = failed.reason();
            let rejection = Rejection::Error;
            input_dead_letter(
                &records, failed.row, rejection, &reason, pipeline, failed_at,
            )
        })
        .collect())
}

/// A dead letter for a raw record (payload taken from `payload`, not from the record), giving
/// `reason` for `rejection`.
pub fn dead_letter(
    raw: &RawRecord,
    payload: &[u8],
    rejection: Rejection,
    reason: &str,
    pipeline: &str,
    failed_at: &str,
) -> Rejected {
    let source = SourceCoordinates {
        topic: raw.topic.clone(),
        partition: raw.partition,
        offset: raw.offset,
        timestamp: raw
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    };
    Rejected {
        letter: DeadLetter::new(reason, payload, source, pipeline, failed_at),
        key: raw.key.clone(),
        rejection,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::TimestampMillisecondArray;
    use arrow::array::{ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray};

    use super::*;
    use crate::common::kafka_records_schema;

    #[test]
    fn every_message_is_found_by_its_partition_and_offset_and_nothing_else() {
        // Runs of partitions interleaved, a gap in partition 1's offsets, a partition read
        // again from an earlier offset, and a single-message run.
        let at: Vec<(i32, i64)> = [
            (1, 10..14),
            (0, 0..3),
            (1, 20..22),
            (2, 7..8),
            (0, 3..5),
            (3, 50..52),
            (3, 40..42),
        ]
        .into_iter()
        .flat_map(|(p, offsets)| offsets.map(move |o| (p, o)))
        .collect();
        let rows = at.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["t"; rows])),
            Arc::new(Int32Array::from_iter_values(at.iter().map(|(p, _)| *p))),
            Arc::new(Int64Array::from_iter_values(at.iter().map(|(_, o)| *o))),
            Arc::new(TimestampMillisecondArray::from(vec![None; rows]).with_timezone("UTC")),
            Arc::new(BinaryArray::from(vec![None; rows])),
            Arc::new(StringArray::from(vec!["{}"; rows])),
        ];
        let batch = RecordBatch::try_new(kafka_records_schema(), columns).expect("batch");
        let records = KafkaRecords::new(&batch).expect("records");
        let runs = OffsetRuns::of(&records);
        for (row, (partition, offset)) in at.iter().enumerate() {
            assert_eq!(
                runs.row(*partition, *offset),
                Some(row),
                "{partition}/{offset}"
            );
        }
        for (partition, offset) in [
            (1, 14),
            (1, 19),
            (1, 9),
            (0, 5),
            (2, 6),
            (4, 0),
            (3, 42),
            (-1, 0),
        ] {
            assert_eq!(runs.row(partition, offset), None, "{partition}/{offset}");
        }
    }
}
