//! The topics a pipeline needs (its source, its dead letter queue and `dlq replay`'s ledger):
//! what each is, and creating the missing ones.

use std::collections::BTreeMap;

use crate::admin::{TopicAdmin, TopicSpec, TopicStatus};
use crate::config::{CommitMode, PipelineConfig};
use crate::dlq::MAX_RECORD_BYTES;
use crate::{client_config, KafkaError};

/// A topic of the pipeline with what provisioning found or did.
#[derive(Debug)]
pub struct EnsuredTopic {
    /// What the pipeline asks for.
    pub spec: TopicSpec,
    /// Created now, or found (and left unchanged).
    pub status: TopicStatus,
}

/// Creates the pipeline's missing topics; the existing ones are left unchanged.
pub async fn ensure_topics(pipeline: &PipelineConfig) -> Result<Vec<EnsuredTopic>, KafkaError> {
    let admin = TopicAdmin::new(&client_config(
        &pipeline.source.brokers,
        &pipeline.source.properties,
    ))?;
    let mut topics = Vec::new();
    for spec in topic_specs(pipeline) {
        let status = admin.ensure_topic(&spec).await?;
        topics.push(EnsuredTopic { spec, status });
    }
    Ok(topics)
}

/// The source and dead letter topics and the replay ledger of a pipeline, and its control topic
/// with `commit.mode: one_committer`.
pub fn topic_specs(pipeline: &PipelineConfig) -> Vec<TopicSpec> {
    let retention_ms = pipeline.dead_letter.retention.as_millis().to_string();
    let mut specs = vec![
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
                    MAX_RECORD_BYTES.to_string(),
                ),
            ]),
        },
        ledger_spec(pipeline),
    ];
    if pipeline.commit.mode == CommitMode::OneCommitter {
        specs.push(control_spec(pipeline));
    }
    specs
}

/// The control topic: one partition (the committer reads every share in the order sent),
/// kept an hour (a share is answered within seconds, or its runner lands it itself).
pub fn control_spec(pipeline: &PipelineConfig) -> TopicSpec {
    TopicSpec {
        name: pipeline.control_topic(),
        partitions: 1,
        replication: pipeline.source.replication_factor,
        configs: BTreeMap::from([("retention.ms".to_string(), "3600000".to_string())]),
    }
}

/// The replay ledger topic (`dlq replay`'s record of what it sent): one partition, kept forever
/// so that a dead letter is never replayed twice.
pub fn ledger_spec(pipeline: &PipelineConfig) -> TopicSpec {
    TopicSpec {
        name: ledger_topic(&pipeline.dead_letter.topic),
        partitions: 1,
        replication: pipeline.source.replication_factor,
        configs: BTreeMap::from([("retention.ms".to_string(), "-1".to_string())]),
    }
}

/// The ledger topic of a dead letter topic.
pub fn ledger_topic(dead_letter_topic: &str) -> String {
    format!("{dead_letter_topic}.replayed")
}
