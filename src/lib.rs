//! campaign-pipeline: Kafka campaign events to Apache Iceberg tables through SQL, exactly once.

pub mod bench;
pub mod cli;
pub mod dashboard;
pub mod dlq;
pub mod maintain;
pub mod pipeline;
pub mod query;
pub mod setup;
pub mod source;
pub mod sql_server;

pub use campaign_core::{catalog, common, config, engine, sink, telemetry, window};
pub use campaign_generator as generator;
pub use campaign_kafka as kafka;
