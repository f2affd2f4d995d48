//! The pipeline: the core's runner and planning, `run` on Kafka, and `sample.rs`, which runs
//! both SQL files over sample payloads for `check --sample`.

pub use campaign_core::pipeline::*;
pub use campaign_kafka::run::run;
pub use campaign_tools::sample;
