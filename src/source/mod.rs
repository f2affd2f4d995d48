//! The Kafka source: messages of the pipeline's topic, as micro-batches of `kafka_records` rows.

pub mod batch;
pub mod kafka;

pub use batch::{MicroBatch, RawRecord};
pub use kafka::{KafkaSource, SourceOptions};

/// Errors of the source, naming the topic.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be created or subscribed.
    #[error("consumer for topic {topic}: {message}")]
    Consumer { topic: String, message: String },
    /// Building the Arrow batch failed.
    #[error("building a micro-batch of {topic}: {source}")]
    Arrow {
        topic: String,
        source: arrow::error::ArrowError,
    },
}
