//! The dead letter queue: rejected rows as self-describing records on a Kafka topic. The record
//! and its writer are the core's; the producer and the tools (statistics, patterns, monitor,
//! export, replay) are here.

pub mod entry;
pub mod export;
pub mod monitor;
pub mod pattern;
pub mod replay;
pub mod stats;

pub use campaign_core::dlq::*;
pub use campaign_kafka::delivery::KafkaDelivery;
pub use pattern::pattern_of;
