//! Plain types shared by the stages: the Arrow schema of raw Kafka records and the campaign event.

pub mod clock;
pub mod cpu;
pub mod error;
pub mod hashing;
pub mod offsets;
pub mod records;
pub mod selection;
pub mod summary;

pub use clock::{Clock, SystemClock};
pub use offsets::{Fenced, Offsets, Watermarks};
pub use selection::Selection;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Name under which each micro-batch of raw records is visible to the parsing SQL.
pub const KAFKA_RECORDS_TABLE: &str = "kafka_records";

/// Output column of the parsing SQL: NULL for a valid row, else the reason it was rejected.
pub const ERROR_COLUMN: &str = "_error";

pub use records::SOURCE_COLUMNS;

/// Header of a message that `dlq replay` sent back: the `topic/partition/offset` it replays.
pub const REPLAY_OF_HEADER: &str = "campaign-pipeline.replay-of";

/// Whether a column is bookkeeping (starts with `_`) and so never written to a table.
pub fn is_internal_column(name: &str) -> bool {
    name.starts_with('_')
}

/// Schema of `kafka_records`: one row per Kafka message whose payload is valid UTF-8.
pub fn kafka_records_schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(build_kafka_records_schema).clone()
}

fn build_kafka_records_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(records::TOPIC, DataType::Utf8, false),
        Field::new(records::PARTITION, DataType::Int32, false),
        Field::new(records::OFFSET, DataType::Int64, false),
        Field::new(
            records::TIMESTAMP,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new(records::KEY, DataType::Binary, true),
        Field::new(records::VALUE, DataType::Utf8, false),
    ]))
}

/// The table-facing part of a SQL output schema: every column not starting with `_`.
pub fn table_schema(sql_output: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        sql_output
            .fields()
            .iter()
            .filter(|f| !is_internal_column(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

/// An event time (microseconds since the epoch) as RFC 3339 with milliseconds.
pub fn format_micros(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}
