//! The Kafka source: messages of the pipeline's topic, as micro-batches of `kafka_records` rows.

pub mod batch;
pub mod kafka;
mod quirks;

pub use batch::{MicroBatch, RawRecord};
pub use kafka::{KafkaSource, ResumeLookup, SourceEvent, SourceOptions};

/// Errors of the source, naming the topic.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be created or subscribed.
    #[error("consumer for topic {topic}")]
    Consumer {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The reading thread could not be started.
    #[error("starting the reading thread for topic {topic}")]
    Thread {
        topic: String,
        #[source]
        source: std::io::Error,
    },
    /// Where assigned partitions resume could not be read from the tables.
    #[error("topic {topic}: reading where partitions {partitions:?} resume from the tables")]
    Resume {
        topic: String,
        partitions: Vec<i32>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The tables hold a partition further than the topic's end: the topic is not the one they
    /// read (deleted and created again, or truncated).
    #[error(
        "topic {topic} partition {partition} ends at offset {end}, but the tables hold its events up \
         to offset {tables}: the topic was deleted and created again, or truncated, after they were \
         read. Nothing was read from it, so none of its events is skipped in silence; `run \
         --accept-offset-jumps` reads it from its start into these tables and records the jump"
    )]
    BeyondEnd {
        topic: String,
        partition: i32,
        /// Where the tables resume the partition.
        tables: i64,
        /// The partition's end (high watermark) on the broker.
        end: i64,
    },
    /// Events the tables never absorbed are no longer on the broker (retention or compaction
    /// deleted them first).
    #[error(
        "topic {topic} partition {partition} holds nothing before offset {first}, but the tables hold \
         its events only up to offset {tables}: {} events were deleted from the topic before they \
         were read. Nothing was read from it; `run --accept-offset-jumps` resumes at offset {first} \
         and records the jump",
        first - tables
    )]
    Gone {
        topic: String,
        partition: i32,
        /// Where the tables resume the partition.
        tables: i64,
        /// The first offset the partition still holds.
        first: i64,
    },
    /// Building the Arrow batch failed.
    #[error("building a micro-batch of {topic}")]
    Arrow {
        topic: String,
        #[source]
        source: arrow::error::ArrowError,
    },
}
