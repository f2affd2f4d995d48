//! campaign-pipeline's tables over their lifetime: creating the namespace and tables with the
//! schemas the pipeline's SQL returns (`setup`), and keeping them small and fast to read for
//! months (`maintain`: compaction, snapshot expiry, orphan files). Iceberg only: no Kafka.

pub mod maintain;
pub mod setup;

use campaign_core::{catalog, common, config, engine, pipeline, sink};
