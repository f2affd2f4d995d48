//! Topic administration through the Kafka admin API: create, describe, read configs back,
//! delete.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use super::client_log::ClientLog;
use super::KafkaError;

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A topic to create: name, partitions, replication and topic-level configs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// Topic configs such as `retention.ms`.
    pub configs: BTreeMap<String, String>,
}

/// What `ensure_topic` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    /// Created now.
    Created,
    /// Existed already with this many partitions; nothing was changed.
    Existed { partitions: usize },
}

/// Admin client bound to one cluster.
pub struct TopicAdmin {
    admin: AdminClient<ClientLog>,
    brokers: String,
}

impl TopicAdmin {
    /// Connects an admin client with the given client settings.
    pub fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        let brokers = config
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_string();
        let admin = config
            .create_with_context(ClientLog)
            .map_err(|source| KafkaError::Client {
                role: "admin client",
                brokers: brokers.clone(),
                source,
            })?;
        Ok(Self { admin, brokers })
    }

    /// Creates the topic unless it exists; an existing topic is left as it is.
    pub async fn ensure_topic(&self, spec: &TopicSpec) -> Result<TopicStatus, KafkaError> {
        if let Some(partitions) = self.partition_count(&spec.name)? {
            return Ok(TopicStatus::Existed { partitions });
        }
        let mut topic = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication),
        );
        for (key, value) in &spec.configs {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| self.request_error(&spec.name, "creating the topic", e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    let partitions = self.partition_count(&spec.name)?.unwrap_or_default();
                    return Ok(TopicStatus::Existed { partitions });
                }
                Err((_, code)) => {
                    return Err(self.request_error(
                        &spec.name,
                        "creating the topic",
                        rdkafka::error::KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        Ok(TopicStatus::Created)
    }

    /// Deletes `topic` with its messages; a topic that does not exist is already gone.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), KafkaError> {
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .delete_topics(&[topic], &options)
            .await
            .map_err(|e| self.request_error(topic, "deleting the topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => {
                    return Err(self.request_error(
                        topic,
                        "deleting the topic",
                        rdkafka::error::KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Number of partitions of `topic`, or `None` when it does not exist.
    pub fn partition_count(&self, topic: &str) -> Result<Option<usize>, KafkaError> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
            .map_err(|e| self.request_error(topic, "the metadata request", e))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len()))
    }

    /// The topic's configuration entries as the broker reports them.
    pub async fn topic_configs(&self, topic: &str) -> Result<BTreeMap<String, String>, KafkaError> {
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
            .await
            .map_err(|e| self.request_error(topic, "describing the topic's configuration", e))?;
        let mut configs = BTreeMap::new();
        for result in results {
            let resource = result.map_err(|code| {
                self.request_error(
                    topic,
                    "describing the topic's configuration",
                    rdkafka::error::KafkaError::AdminOp(code),
                )
            })?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    configs.insert(entry.name, value);
                }
            }
        }
        Ok(configs)
    }

    fn request_error(
        &self,
        topic: &str,
        what: &'static str,
        source: rdkafka::error::KafkaError,
    ) -> KafkaError {
        KafkaError::Request {
            topic: topic.to_string(),
            what,
            brokers: self.brokers.clone(),
            source: Box::new(source),
        }
    }
}
