//! Rejected rows to dead letter records: the SQL's reason plus the raw message it came from.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;

use crate::common::hashing::FastMap;
use crate::common::records::{Coordinates, KafkaRecords};
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
    let at = Coordinates::of(rejected)?;
    let (partitions, offsets) = (&at.partitions, &at.offsets);

    let records = KafkaRecords::new(input)?;
    // A few rows of a batch are rejected: the input is looked up in a map of those rows rather
    // than a map of every input row built for a few lookups.
    let mut rows: FastMap<(i32, i64), Option<usize>> = (0..rejected.num_rows())
        .map(|i| ((partitions.value(i), offsets.value(i)), None))
        .collect();
    for row in 0..records.len() {
        if let Some(found) = rows.get_mut(&(records.partition(row), records.offset(row))) {
            *found = Some(row);
        }
    }

    let mut letters = Vec::with_capacity(rejected.num_rows());
    for i in 0..rejected.num_rows() {
        let Some(&Some(row)) = rows.get(&(partitions.value(i), offsets.value(i))) else {
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
