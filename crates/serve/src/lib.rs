//! campaign-pipeline's ways to read its tables: SQL over the Iceberg tables with bounded memory
//! and time travel (`query`, which the CLI's `query` runs), the dashboard, and the
//! PostgreSQL-wire SQL endpoint for BI tools. Readers only: nothing here writes a table.

pub mod dashboard;
pub mod query;
pub mod sql_server;

use campaign_core::{catalog, common, config, telemetry};
