//! The SQL engine: one DataFusion session per pipeline, with the JSON functions registered.

pub mod blank_text;
pub mod case_chain;
pub mod case_inputs;
pub mod dictionary_text;
pub mod first_match;
pub mod flat_json;
pub mod json_fields;
pub mod now;
pub mod plain_projection;
pub mod problem;
pub mod projections;
#[cfg(target_arch = "x86_64")]
mod sse2;
pub mod stage;
pub mod utc_timestamps;

use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;

pub use problem::SqlProblem;
pub use stage::{BatchSlot, FailedRow, Isolated, SqlStage};

/// A session configured the way every pipeline SQL runs: JSON functions and source spans for errors.
pub fn new_session() -> SessionContext {
    let mut config = SessionConfig::new();
    // Spans let planning errors point at the line of the SQL file, not just name the column.
    config.options_mut().sql_parser.collect_spans = true;
    // Event times are instants: `now()` and `TIMESTAMPTZ` casts are in UTC, stored as Iceberg timestamptz.
    config.options_mut().execution.time_zone = Some("UTC".to_string());
    // One core per pipeline stage: micro-batches are small, and repartitioning them costs more
    // than it gains.
    config.options_mut().execution.target_partitions = 1;
    let mut ctx = SessionContext::new_with_config(config);
    // Registration only fails on a name clash inside the registry, which a fresh session cannot have.
    if let Err(err) = datafusion_functions_json::register_all(&mut ctx) {
        tracing::warn!("registering JSON functions failed: {err}");
    }
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        now::ProcessingTimeNow::default(),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        json_fields::JsonFields::default(),
    ));
    ctx
}
