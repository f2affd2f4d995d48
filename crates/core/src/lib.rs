//! The streaming core of campaign-pipeline: what runs the pipeline, knowing nothing of Kafka,
//! servers or tools.

pub mod catalog;
pub mod common;
pub mod config;
pub mod control;
pub mod dlq;
pub mod engine;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod window;
