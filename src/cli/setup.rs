//! `setup`: the topics through the Kafka admin API and the Iceberg namespace and tables.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::catalog::open_catalog;
use crate::config::PipelineConfig;
use crate::engine::new_session;
use crate::kafka::admin::{TopicAdmin, TopicSpec, TopicStatus};
use crate::kafka::client_config;
use crate::pipeline::plan::plan_pipeline;
use crate::sink::table::{ensure_namespace, ensure_table, Ensured};

/// Flags of `setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Set up only this pipeline (default: all of them).
    #[arg(long)]
    pub pipeline: Option<String>,
}

/// Creates what is missing and reports what already existed.
pub async fn run(config_path: &Path, args: &SetupArgs) -> anyhow::Result<bool> {
    let config = super::load_config(config_path)?;
    for pipeline in config.selected(args.pipeline.as_deref())? {
        // The table schemas come from the SQL, so the SQL must plan before anything is created.
        let planned = match plan_pipeline(&config, pipeline, &new_session()).await {
            Ok(planned) => planned,
            Err(problems) => {
                for problem in &problems {
                    println!("{problem}");
                }
                bail!("pipeline {}: fix the SQL before setup", pipeline.name);
            }
        };

        let admin = TopicAdmin::new(&client_config(
            &pipeline.source.brokers,
            &pipeline.source.properties,
        ))?;
        for spec in topic_specs(pipeline) {
            let status = admin.ensure_topic(&spec).await?;
            report_topic(&spec, &status);
        }

        let sink = &pipeline.sink;
        let catalog = open_catalog(&config, sink).await?;
        let status = ensure_namespace(catalog.as_ref(), &sink.namespace).await?;
        println!("namespace {}: {}", sink.namespace, describe(status));
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
            println!(
                "table {}.{}: {} (partitioned by {})",
                sink.namespace,
                table.name,
                describe(status),
                table.partition_by.join(", ")
            );
        }
    }
    Ok(true)
}

/// The source and dead letter topics and the replay ledger of a pipeline as `setup` creates them.
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

fn report_topic(spec: &TopicSpec, status: &TopicStatus) {
    match status {
        TopicStatus::Created => println!(
            "topic {}: created ({} partitions{})",
            spec.name,
            spec.partitions,
            spec.configs
                .iter()
                .map(|(k, v)| format!(", {k}={v}"))
                .collect::<String>()
        ),
        TopicStatus::Existed { partitions } if *partitions == spec.partitions as usize => {
            println!(
                "topic {}: already exists ({partitions} partitions), left unchanged",
                spec.name
            )
        }
        TopicStatus::Existed { partitions } => println!(
            "topic {}: already exists with {partitions} partitions (pipelines.yaml asks for {}), left unchanged",
            spec.name, spec.partitions
        ),
    }
}

fn describe(status: Ensured) -> &'static str {
    match status {
        Ensured::Created => "created",
        Ensured::Existed => "already exists, left unchanged",
    }
}
