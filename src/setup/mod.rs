//! What a pipeline needs before it runs: its Kafka topics (source, dead letter queue, replay
//! ledger) and its Iceberg namespace and tables, created when missing and left unchanged when
//! they exist. `setup`, `bench`, `dlq` and the tests all provision through here.

use std::collections::BTreeMap;

use crate::catalog::{check_warehouse, open_catalog, CatalogError};
use crate::config::{Config, PipelineConfig};
use crate::engine::{new_session, SqlProblem};
use crate::kafka::admin::{TopicAdmin, TopicSpec, TopicStatus};
use crate::kafka::{client_config, KafkaError};
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
    /// A topic could not be created.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The catalog could not be opened.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The namespace or a table could not be created.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// What provisioning found or did.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// Each topic with what was found or done.
    pub topics: Vec<(TopicSpec, TopicStatus)>,
    /// The namespace and tables.
    pub tables: TablesReport,
}

/// What provisioning the Iceberg side found or did.
#[derive(Debug, Default)]
pub struct TablesReport {
    /// The namespace: created or already there.
    pub namespace: Option<Ensured>,
    /// Each table's name and what was found or done.
    pub tables: Vec<(String, Ensured)>,
}

/// Provisions everything `pipeline` needs: topics, namespace and tables.
pub async fn set_up(config: &Config, pipeline: &PipelineConfig) -> Result<SetupReport, SetupError> {
    let planned = plan(config, pipeline).await?;
    let admin = TopicAdmin::new(&client_config(
        &pipeline.source.brokers,
        &pipeline.source.properties,
    ))?;
    let mut topics = Vec::new();
    for spec in topic_specs(pipeline) {
        let status = admin.ensure_topic(&spec).await?;
        topics.push((spec, status));
    }
    let tables = ensure_tables(config, pipeline, &planned).await?;
    Ok(SetupReport { topics, tables })
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
        let status = ensure_table(
            catalog.as_ref(),
            &sink.namespace,
            &table.name,
            schema,
            &table.partition_by,
        )
        .await?;
        let loaded = load_table(catalog.as_ref(), &sink.namespace, &table.name).await?;
        check_storage(&loaded, &format!("{}.{}", sink.namespace, table.name)).await?;
        tables.push((table.name.clone(), status));
    }
    Ok(TablesReport {
        namespace: Some(namespace),
        tables,
    })
}

/// The source and dead letter topics and the replay ledger of a pipeline.
pub fn topic_specs(pipeline: &PipelineConfig) -> [TopicSpec; 3] {
    let retention_ms = pipeline.dead_letter.retention.as_millis().to_string();
    [
        TopicSpec {
            name: pipeline.source.topic.clone(),
            partitions: pipeline.source.partitions,
            replication: pipeline.source.replication_factor,
            configs: BTreeMap::new(),
        },
        TopicSpec {
            name: pipeline.dead_letter.topic.clone(),
            partitions: pipeline.dead_letter.partitions,
            replication: pipeline.source.replication_factor,
            configs: BTreeMap::from([
                ("retention.ms".to_string(), retention_ms),
                (
                    "max.message.bytes".to_string(),
                    crate::dlq::MAX_RECORD_BYTES.to_string(),
                ),
            ]),
        },
        ledger_spec(pipeline),
    ]
}

/// The replay ledger topic (`dlq replay`'s record of what it sent): one partition, kept forever
/// so that a dead letter is never replayed twice.
pub fn ledger_spec(pipeline: &PipelineConfig) -> TopicSpec {
    TopicSpec {
        name: crate::dlq::replay::ledger_topic(&pipeline.dead_letter.topic),
        partitions: 1,
        replication: pipeline.source.replication_factor,
        configs: BTreeMap::from([("retention.ms".to_string(), "-1".to_string())]),
    }
}
