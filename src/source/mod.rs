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
    /// Building the Arrow batch failed.
    #[error("building a micro-batch of {topic}")]
    Arrow {
        topic: String,
        #[source]
        source: arrow::error::ArrowError,
    },
}
