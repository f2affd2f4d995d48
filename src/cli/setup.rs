//! `setup`: the topics through the Kafka admin API and the Iceberg namespace and tables.

use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::kafka::admin::{TopicSpec, TopicStatus};
use crate::kafka::topics::{ensure_topics, EnsuredTopic};
use crate::setup::{ensure_tables, plan, SetupError};
use crate::sink::table::Ensured;

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
        // The table schemas come from the SQL: nothing is created while it does not plan.
        let planned = match plan(&config, pipeline).await {
            Ok(planned) => planned,
            Err(SetupError::Sql { problems, .. }) => {
                for problem in &problems {
                    println!("{problem}");
                }
                bail!("pipeline {}: fix the SQL before setup", pipeline.name);
            }
            Err(other) => return Err(other.into()),
        };
        for EnsuredTopic { spec, status } in &ensure_topics(pipeline).await? {
            report_topic(spec, status);
        }
        let tables = ensure_tables(&config, pipeline, &planned).await?;
        let sink = &pipeline.sink;
        if let Some(status) = tables.namespace {
            println!("namespace {}: {}", sink.namespace, describe(status));
        }
        for ((name, status), table) in tables
            .tables
            .iter()
            .zip([&sink.events_table, &sink.metrics_table])
        {
            println!(
                "table {}.{name}: {} (partitioned by {})",
                sink.namespace,
                describe(*status),
                table.partition_by.join(", ")
            );
        }
    }
    Ok(true)
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
