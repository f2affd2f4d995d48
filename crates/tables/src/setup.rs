//! The Iceberg side of what a pipeline needs before it runs: its namespace and tables, with the
//! schemas its SQL returns, created when missing and left unchanged when they exist. `setup`,
//! `bench` and the tests provision through here (the topics are the Kafka crate's).

use crate::catalog::{check_warehouse, open_catalog, CatalogError};
use crate::config::{Config, PipelineConfig};
use crate::engine::{new_session, SqlProblem};
use crate::pipeline::plan::{plan_pipeline, PlannedSql};
use crate::sink::table::{check_storage, ensure_namespace, ensure_table, load_table, Ensured};
use crate::sink::SinkError;

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The table schemas come from the SQL, so nothing is created while it does not plan.
    #[error("pipeline {pipeline}: fix the SQL before setup")]
    Sql {
        pipeline: String,
        problems: Vec<SqlProblem>,
    },
    /// The catalog could not be opened.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The namespace or a table could not be created.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// What provisioning the Iceberg side found or did.
#[derive(Debug, Default)]
pub struct TablesReport {
    /// The namespace: created or already there.
    pub namespace: Option<Ensured>,
    /// Each table's name and what was found or done.
    pub tables: Vec<(String, Ensured)>,
}

/// The pipeline's SQL planned, as provisioning needs it for the table schemas.
pub async fn plan(config: &Config, pipeline: &PipelineConfig) -> Result<PlannedSql, SetupError> {
    plan_pipeline(config, pipeline, &new_session())
        .await
        .map_err(|problems| SetupError::Sql {
            pipeline: pipeline.name.clone(),
            problems,
        })
}

/// Provisions the Iceberg namespace and both tables, with the schemas the SQL returns.
pub async fn ensure_tables(
    config: &Config,
    pipeline: &PipelineConfig,
    planned: &PlannedSql,
) -> Result<TablesReport, SetupError> {
    let sink = &pipeline.sink;
    let catalog = open_catalog(config, sink).await?;
    check_warehouse(config, sink).await?;
    let namespace = ensure_namespace(catalog.as_ref(), &sink.namespace).await?;
    let mut tables = Vec::new();
    for (table, schema) in [
        (&sink.events_table, &planned.events_schema),
        (&sink.metrics_table, &planned.metrics_schema),
    ] {
        let status = ensure_table(catalog.as_ref(), &sink.namespace, table, schema).await?;
        let loaded = load_table(catalog.as_ref(), &sink.namespace, &table.name).await?;
        check_storage(&loaded, &format!("{}.{}", sink.namespace, table.name)).await?;
        tables.push((table.name.clone(), status));
    }
    Ok(TablesReport {
        namespace: Some(namespace),
        tables,
    })
}
