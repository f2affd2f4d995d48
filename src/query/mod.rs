//! Ad-hoc, read-only SQL over the Iceberg tables of a pipeline's catalog.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::config::Dialect;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg_datafusion::IcebergCatalogProvider;

use crate::config::{Config, PipelineConfig};
use crate::sink::catalog::{open_catalog, CATALOG_NAME};
use crate::sink::SinkError;

/// Errors of ad-hoc queries.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The catalog could not be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The SQL failed to parse, plan or run.
    #[error("{0}")]
    Sql(#[from] DataFusionError),
    /// The statement would change something.
    #[error("only queries are allowed here (SELECT, WITH ..., SHOW, DESCRIBE, EXPLAIN); tables are written by the pipeline")]
    NotReadOnly,
}

/// A session whose default schema is the pipeline's namespace, so `FROM campaign_events` works.
pub async fn session(
    config: &Config,
    pipeline: &PipelineConfig,
) -> Result<SessionContext, QueryError> {
    let catalog = open_catalog(config, &pipeline.sink.catalog).await?;
    let provider = IcebergCatalogProvider::try_new(catalog)
        .await
        .map_err(|e| SinkError::iceberg("listing the catalog", e))?;
    let session_config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, &pipeline.sink.namespace)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(session_config);
    ctx.register_catalog(CATALOG_NAME, Arc::new(provider));
    Ok(ctx)
}

/// Runs one read-only statement and returns its rows.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    use datafusion::sql::parser::Statement as Df;
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    let statement = ctx.state().sql_to_statement(sql, &Dialect::Generic)?;
    let read_only = match &statement {
        Df::Statement(s) => matches!(
            s.as_ref(),
            Sql::Query(_)
                | Sql::ShowTables { .. }
                | Sql::ShowColumns { .. }
                | Sql::ExplainTable { .. }
                | Sql::Explain { .. }
        ),
        Df::Explain(_) => true,
        _ => false,
    };
    if !read_only {
        return Err(QueryError::NotReadOnly);
    }
    let plan = ctx.state().statement_to_plan(statement).await?;
    Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
}
