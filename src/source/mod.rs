//! What a runner reads: the core's `Source` and micro-batches, and the Kafka source.

pub use campaign_core::source::*;
pub use campaign_kafka::source::*;
