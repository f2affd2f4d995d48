//! The columns of `kafka_records` and the source coordinates the parsing SQL passes through,
//! named once and read through their types.

use arrow::array::{
    Array, AsArray, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMillisecondType};
use arrow::error::ArrowError;

/// The Kafka message's topic.
pub const TOPIC: &str = "_topic";
/// The Kafka message's partition.
pub const PARTITION: &str = "_partition";
/// The Kafka message's offset.
pub const OFFSET: &str = "_offset";
/// The Kafka message's timestamp (the producer's CreateTime, or the broker's LogAppendTime).
pub const TIMESTAMP: &str = "_timestamp";
/// The Kafka message's key.
pub const KEY: &str = "_key";
/// The Kafka message's payload, as text.
pub const VALUE: &str = "value";

/// Columns the parsing SQL must pass through so that a rejected row can be traced to its source.
pub const SOURCE_COLUMNS: [&str; 3] = [TOPIC, PARTITION, OFFSET];

/// A `kafka_records` micro-batch read through its columns' types.
pub struct KafkaRecords<'a> {
    topics: &'a StringArray,
    partitions: &'a Int32Array,
    offsets: &'a Int64Array,
    timestamps: &'a TimestampMillisecondArray,
    keys: &'a BinaryArray,
    values: &'a StringArray,
}

impl<'a> KafkaRecords<'a> {
    /// The columns of `batch`, which must have `kafka_records`' schema.
    pub fn new(batch: &'a RecordBatch) -> Result<Self, ArrowError> {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("kafka_records lack `{name}`")))
        };
        let typed = |name: &str, found: &dyn Array| {
            ArrowError::SchemaError(format!(
                "kafka_records' `{name}` is {}, not the source's type",
                found.data_type()
            ))
        };
        let topics = column(TOPIC)?;
        let partitions = column(PARTITION)?;
        let offsets = column(OFFSET)?;
        let timestamps = column(TIMESTAMP)?;
        let keys = column(KEY)?;
        let values = column(VALUE)?;
        Ok(Self {
            topics: topics
                .as_string_opt::<i32>()
                .ok_or_else(|| typed(TOPIC, topics))?,
            partitions: partitions
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| typed(PARTITION, partitions))?,
            offsets: offsets
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| typed(OFFSET, offsets))?,
            timestamps: timestamps
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| typed(TIMESTAMP, timestamps))?,
            keys: keys
                .as_binary_opt::<i32>()
                .ok_or_else(|| typed(KEY, keys))?,
            values: values
                .as_string_opt::<i32>()
                .ok_or_else(|| typed(VALUE, values))?,
        })
    }

    /// Messages in the batch.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The topic of message `row`.
    pub fn topic(&self, row: usize) -> &'a str {
        self.topics.value(row)
    }

    /// The partition of message `row`.
    pub fn partition(&self, row: usize) -> i32 {
        self.partitions.value(row)
    }

    /// The offset of message `row`.
    pub fn offset(&self, row: usize) -> i64 {
        self.offsets.value(row)
    }

    /// The timestamp of message `row` in milliseconds since the epoch, when it has one.
    pub fn timestamp_ms(&self, row: usize) -> Option<i64> {
        self.timestamps
            .is_valid(row)
            .then(|| self.timestamps.value(row))
    }

    /// The key of message `row`, when it has one.
    pub fn key(&self, row: usize) -> Option<&'a [u8]> {
        self.keys.is_valid(row).then(|| self.keys.value(row))
    }

    /// The payload of message `row`.
    pub fn value(&self, row: usize) -> &'a str {
        self.values.value(row)
    }
}

/// The source coordinates of SQL output rows (the columns passed through from `kafka_records`,
/// cast back to the source's types whatever the SQL made of them).
pub struct Coordinates {
    /// `_topic`.
    pub topics: StringArray,
    /// `_partition`.
    pub partitions: Int32Array,
    /// `_offset`.
    pub offsets: Int64Array,
}

impl Coordinates {
    /// The three columns of `rows`.
    pub fn of(rows: &RecordBatch) -> Result<Self, ArrowError> {
        Ok(Self {
            topics: topics(rows)?,
            partitions: partitions(rows)?,
            offsets: offsets(rows)?,
        })
    }
}

/// The `_topic` column of SQL output rows.
pub fn topics(rows: &RecordBatch) -> Result<StringArray, ArrowError> {
    Ok(passed_through(rows, TOPIC, &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

/// The `_partition` column of SQL output rows.
pub fn partitions(rows: &RecordBatch) -> Result<Int32Array, ArrowError> {
    Ok(passed_through(rows, PARTITION, &DataType::Int32)?
        .as_primitive::<Int32Type>()
        .clone())
}

/// The `_offset` column of SQL output rows.
pub fn offsets(rows: &RecordBatch) -> Result<Int64Array, ArrowError> {
    Ok(passed_through(rows, OFFSET, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

fn passed_through(
    rows: &RecordBatch,
    name: &str,
    data_type: &DataType,
) -> Result<arrow::array::ArrayRef, ArrowError> {
    let column = rows
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("the SQL's rows lack `{name}`")))?;
    cast(column, data_type)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int16Array;

    use super::*;

    #[test]
    fn coordinates_are_read_by_name_whatever_the_sql_cast_them_to() {
        let rows = RecordBatch::try_from_iter([
            ("campaign_id", Arc::new(StringArray::from(vec!["c"])) as _),
            (OFFSET, Arc::new(Int32Array::from(vec![7])) as _),
            (PARTITION, Arc::new(Int16Array::from(vec![2])) as _),
            (TOPIC, Arc::new(StringArray::from(vec!["t"])) as _),
        ])
        .unwrap();
        let at = Coordinates::of(&rows).unwrap();
        assert_eq!(
            (
                at.topics.value(0),
                at.partitions.value(0),
                at.offsets.value(0)
            ),
            ("t", 2, 7)
        );
        let missing = RecordBatch::try_from_iter([(
            "campaign_id",
            Arc::new(StringArray::from(vec!["c"])) as _,
        )])
        .unwrap();
        assert!(Coordinates::of(&missing)
            .err()
            .is_some_and(
                |e| e.to_string().contains("`_partition`") || e.to_string().contains("`_topic`")
            ));
    }

    #[test]
    fn kafka_records_are_read_through_their_types() {
        let batch = RecordBatch::try_new(
            crate::common::kafka_records_schema(),
            vec![
                Arc::new(StringArray::from(vec!["t", "t"])),
                Arc::new(Int32Array::from(vec![1, 1])),
                Arc::new(Int64Array::from(vec![10, 11])),
                Arc::new(TimestampMillisecondArray::from(vec![Some(5), None]).with_timezone("UTC")),
                Arc::new(BinaryArray::from(vec![Some(b"k".as_ref()), None])),
                Arc::new(StringArray::from(vec!["{}", "[]"])),
            ],
        )
        .unwrap();
        let records = KafkaRecords::new(&batch).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records.topic(1), records.partition(1), records.offset(1)),
            ("t", 1, 11)
        );
        assert_eq!(
            (records.timestamp_ms(0), records.timestamp_ms(1)),
            (Some(5), None)
        );
        assert_eq!(
            (records.key(0), records.key(1)),
            (Some(b"k".as_ref()), None)
        );
        assert_eq!(records.value(1), "[]");
    }
}
