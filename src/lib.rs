//! campaign-pipeline: Kafka campaign events to Apache Iceberg tables through SQL, exactly once.

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod common;
pub mod config;
pub mod dashboard;
pub mod dlq;
pub mod engine;
pub mod generator;
pub mod kafka;
pub mod maintain;
pub mod pipeline;
pub mod query;
pub mod setup;
pub mod sink;
pub mod source;
pub mod sql_server;
pub mod telemetry;
pub mod window;
