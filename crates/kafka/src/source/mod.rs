//! The Kafka source: the rdkafka consumer on its own thread, building the core's micro-batches
//! of `kafka_records` rows, with the broker workarounds it needs.

mod cursor;
mod headers;
pub mod kafka;
mod queue;
pub(crate) mod quirks;

pub use kafka::{KafkaSource, ResumeLookup, SourceOptions, SOURCE_THREAD};
