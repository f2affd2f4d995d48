//! campaign-pipeline: Kafka campaign events to Apache Iceberg tables through SQL, exactly once.

pub mod cli;
pub mod pipeline;
pub mod source;

pub use campaign_bench as bench;
pub use campaign_collect as collect;
pub use campaign_core::{catalog, common, config, control, engine, sink, telemetry, window};
pub use campaign_generator as generator;
pub use campaign_kafka as kafka;
pub use campaign_serve::{dashboard, query, sql_server};
pub use campaign_tables::{maintain, setup};
pub use campaign_tools::dlq;
