//! Rejected rows to dead letter records: the SQL's reason plus the raw message it came from.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;

use crate::common::hashing::FastMap;
use crate::common::records::{Coordinates, KafkaRecords};
use crate::common::ERROR_COLUMN;
use crate::dlq::{DeadLetter, SourceCoordinates};
use crate::source::RawRecord;

/// Reason given to payloads that are not UTF-8 (they never reach the SQL).
pub const INVALID_UTF8: &str = "invalid utf-8";

/// A dead letter record with the key of its source message.
pub type KeyedDeadLetter = (DeadLetter, Option<Vec<u8>>);

pub use crate::dlq::record::{LATE_REASON as LATE, UNTIMED_REASON as UNTIMED};

/// Where a rejected row's reason comes from.
#[derive(Debug, Clone, Copy)]
pub enum Reason<'a> {
    /// The parsing SQL's `_error` column.
    FromSql,
    /// The same reason for every row (decided after the SQL, e.g. `late`).
    Fixed(&'a str),
}

/// Dead letters for rejected parsed rows, with payload, key and timestamp looked up in the
/// micro-batch they came from by (partition, offset).
pub fn from_rejected_rows(
    rejected: &RecordBatch,
    reason: Reason<'_>,
    input: &RecordBatch,
    pipeline: &str,
    failed_at: &str,
) -> Result<Vec<KeyedDeadLetter>, arrow::error::ArrowError> {
    if rejected.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let errors = match reason {
        Reason::FromSql => Some(cast(
            rejected.column_by_name(ERROR_COLUMN).ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!(
                    "parsing output lacks `{ERROR_COLUMN}`"
                ))
            })?,
            &DataType::Utf8,
        )?),
        Reason::Fixed(_) => None,
    };
    let errors = errors.as_ref().map(|e| e.as_string::<i32>());
    let at = Coordinates::of(rejected)?;
    let (partitions, offsets) = (&at.partitions, &at.offsets);

    let records = KafkaRecords::new(input)?;
    let rows: FastMap<(i32, i64), usize> = (0..records.len())
        .map(|i| ((records.partition(i), records.offset(i)), i))
        .collect();

    let mut letters = Vec::with_capacity(rejected.num_rows());
    for i in 0..rejected.num_rows() {
        let Some(&row) = rows.get(&(partitions.value(i), offsets.value(i))) else {
            // The SQL invented a row that matches no message: report it rather than lose it.
            tracing::warn!(
                partition = partitions.value(i),
                offset = offsets.value(i),
                "a rejected row matches no message of the batch"
            );
            continue;
        };
        let raw = RawRecord {
            topic: records.topic(row).to_string(),
            partition: records.partition(row),
            offset: records.offset(row),
            timestamp_ms: records.timestamp_ms(row),
            key: records.key(row).map(<[u8]>::to_vec),
            payload: Vec::new(),
        };
        let reason = match (reason, errors) {
            (Reason::Fixed(fixed), _) => fixed,
            (Reason::FromSql, Some(errors)) if errors.is_valid(i) => errors.value(i),
            (Reason::FromSql, _) => "rejected",
        };
        letters.push(dead_letter(
            &raw,
            records.value(row).as_bytes(),
            reason,
            pipeline,
            failed_at,
        ));
    }
    Ok(letters)
}

/// A dead letter for a raw record (payload taken from `payload`, not from the record).
pub fn dead_letter(
    raw: &RawRecord,
    payload: &[u8],
    reason: &str,
    pipeline: &str,
    failed_at: &str,
) -> KeyedDeadLetter {
    let source = SourceCoordinates {
        topic: raw.topic.clone(),
        partition: raw.partition,
        offset: raw.offset,
        timestamp: raw
            .timestamp_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    };
    (
        DeadLetter::new(reason, payload, source, pipeline, failed_at),
        raw.key.clone(),
    )
}
