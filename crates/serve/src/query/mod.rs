//! Ad-hoc, read-only SQL over the Iceberg tables of a pipeline's catalog, at their current
//! snapshots or back in time, plus listings of the tables and their snapshots.

pub mod catalog_info;
pub mod format;
pub mod memory;
pub mod time_travel;

pub use catalog_info::{snapshots, tables};
pub use format::{render, OutputFormat};

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::config::Dialect;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergCatalogProvider;

use crate::catalog::CatalogError;
use crate::catalog::{open_catalog, CATALOG_NAME};
use crate::config::{Config, PipelineConfig};

/// Errors of ad-hoc queries.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The catalog could not be opened or answered with an error.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The SQL failed to parse, plan or run.
    #[error(transparent)]
    Sql(#[from] DataFusionError),
    /// Time travel asked for something the tables do not have.
    #[error("{0}")]
    TimeTravel(String),
    /// Formatting the rows failed.
    #[error("formatting the result")]
    Format(#[from] arrow::error::ArrowError),
    /// The statement would change something.
    #[error("only queries are allowed here (SELECT, WITH ..., SHOW, DESCRIBE, EXPLAIN); tables are written by the pipeline")]
    NotReadOnly,
}

/// Which version of the tables a session reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsOf {
    /// The current snapshots, refreshed per query.
    #[default]
    Current,
    /// This snapshot of the table that has it; the other tables at their current snapshots.
    Snapshot(i64),
    /// For each table, the snapshot that was current at this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// A session over the namespace's tables as of `as_of`, each under its bare name.
pub async fn session_at(
    config: &Config,
    pipeline: &PipelineConfig,
    as_of: AsOf,
) -> Result<SessionContext, QueryError> {
    if as_of == AsOf::Current {
        return session(config, pipeline).await;
    }
    let catalog = open_catalog(config, &pipeline.sink).await?;
    let namespace = crate::catalog::namespace_ident(&pipeline.sink.namespace)?;
    let idents = catalog.list_tables(&namespace).await.map_err(|e| {
        CatalogError::iceberg(format!("listing namespace {}", pipeline.sink.namespace), e)
    })?;
    let ctx = memory::bounded_session(
        SessionConfig::new().with_information_schema(true),
        memory::MemoryBounds::from_settings(&config.sql_endpoint),
    )?;
    let mut found_snapshot = false;
    for ident in idents {
        let table = catalog
            .load_table(&ident)
            .await
            .map_err(|e| CatalogError::iceberg(format!("table {}", ident.name()), e))?;
        // `--snapshot` names one table's snapshot: the others read as they are now.
        let snapshot = match as_of {
            AsOf::Snapshot(id) if table.metadata().snapshot_by_id(id).is_none() => {
                time_travel::snapshot_of(&table, AsOf::Current)?
            }
            AsOf::Snapshot(_) => {
                found_snapshot = true;
                time_travel::snapshot_of(&table, as_of)?
            }
            _ => time_travel::snapshot_of(&table, as_of)?,
        };
        ctx.register_table(
            ident.name(),
            time_travel::provider_at(table, snapshot).await?,
        )?;
    }
    if let AsOf::Snapshot(id) = as_of {
        if !found_snapshot {
            return Err(QueryError::TimeTravel(format!(
                "no table of namespace {} has snapshot {id}; `campaign-pipeline snapshots TABLE` lists them",
                pipeline.sink.namespace
            )));
        }
    }
    Ok(ctx)
}

/// A session whose default schema is the pipeline's namespace, so `FROM campaign_events` works.
pub async fn session(
    config: &Config,
    pipeline: &PipelineConfig,
) -> Result<SessionContext, QueryError> {
    let catalog = open_catalog(config, &pipeline.sink).await?;
    let provider = IcebergCatalogProvider::try_new(catalog.clone())
        .await
        .map_err(|e| CatalogError::iceberg("listing the catalog", e))?;
    let session_config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, &pipeline.sink.namespace)
        .with_information_schema(true);
    let ctx = memory::bounded_session(
        session_config,
        memory::MemoryBounds::from_settings(&config.sql_endpoint),
    )?;
    ctx.register_catalog(CATALOG_NAME, Arc::new(provider));
    let namespace = crate::catalog::namespace_ident(&pipeline.sink.namespace)?;
    for (name, function) in time_travel::TimeTravel::functions(catalog, namespace) {
        ctx.register_udtf(name, function);
    }
    Ok(ctx)
}

/// Whether a statement only reads: a query, SHOW, DESCRIBE, or EXPLAIN of such (EXPLAIN
/// ANALYZE runs its statement, so what it explains must be read-only too).
fn is_read_only(statement: &datafusion::sql::parser::Statement) -> bool {
    use datafusion::sql::parser::Statement as Df;
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    fn sql_read_only(statement: &Sql) -> bool {
        match statement {
            Sql::Query(_)
            | Sql::ShowTables { .. }
            | Sql::ShowColumns { .. }
            | Sql::ExplainTable { .. } => true,
            Sql::Explain { statement, .. } => sql_read_only(statement),
            _ => false,
        }
    }
    match statement {
        Df::Statement(s) => sql_read_only(s),
        Df::Explain(explain) => is_read_only(&explain.statement),
        _ => false,
    }
}

/// Runs one read-only statement and returns its rows.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let statement = ctx.state().sql_to_statement(sql, &Dialect::Generic)?;
    if !is_read_only(&statement) {
        return Err(QueryError::NotReadOnly);
    }
    let plan = ctx.state().statement_to_plan(statement).await?;
    Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
}
