//! campaign-pipeline on Kafka: the source (the rdkafka consumer on its own thread), the dead
//! letter producer, `run` (the core's runner over both), and the plumbing the tools share:
//! client settings, topic administration and the pipeline's topics, the event producer.

pub mod admin;
pub mod client_log;
pub mod control_topic;
pub mod delivery;
pub mod ends;
pub mod polled_producer;
pub mod producer;
pub mod reader;
pub mod run;
pub mod source;
pub mod topics;

use campaign_core::{common, config, dlq, telemetry};

use std::collections::BTreeMap;

use client_log::ClientLog;
use polled_producer::PolledProducer;
use rdkafka::consumer::BaseConsumer;
use rdkafka::ClientConfig;

/// Errors talking to Kafka, each naming the topic or broker involved.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A client could not be created from the configuration.
    #[error("cannot create a Kafka {role} for {brokers}")]
    Client {
        role: &'static str,
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    /// An admin operation failed.
    #[error("topic {topic}: {message}")]
    Admin { topic: String, message: String },
    /// A request about a topic failed.
    #[error("topic {topic}: {what} failed (brokers {brokers})")]
    Request {
        topic: String,
        what: &'static str,
        brokers: String,
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A message could not be delivered.
    #[error("delivery to {topic} failed")]
    Delivery {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    /// The broker did not answer in time.
    #[error("{what}: no answer from {brokers} within {seconds}s")]
    Timeout {
        what: String,
        brokers: String,
        seconds: u64,
    },
}

/// A consumer for partitions it assigns itself: it commits nothing, creates no topic and reports
/// ends of partitions. `role` names it in errors. Returned with the brokers it was given.
pub fn assigning_consumer(
    client: &ClientConfig,
    group_id: &str,
    role: &'static str,
) -> Result<(BaseConsumer<ClientLog>, String), KafkaError> {
    let brokers = client
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let mut config = client.clone();
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false");
    let consumer = config
        .create_with_context(ClientLog)
        .map_err(|source| KafkaError::Client {
            role,
            brokers: brokers.clone(),
            source,
        })?;
    Ok((consumer, brokers))
}

/// Assigns `consumer` the partitions of `topic`, each at its offset.
pub fn assign_at(
    consumer: &BaseConsumer<ClientLog>,
    topic: &str,
    brokers: &str,
    offsets: impl IntoIterator<Item = (i32, rdkafka::Offset)>,
) -> Result<(), KafkaError> {
    let request = |what: &'static str, source| KafkaError::Request {
        topic: topic.to_string(),
        what,
        brokers: brokers.to_string(),
        source: Box::new(source),
    };
    let mut assignment = rdkafka::TopicPartitionList::new();
    for (partition, offset) in offsets {
        assignment
            .add_partition_offset(topic, partition, offset)
            .map_err(|e| request("listing the partitions to assign", e))?;
    }
    rdkafka::consumer::Consumer::assign(consumer, &assignment)
        .map_err(|e| request("assigning its partitions", e))
}

/// Whether librdkafka's error is an end of partition: bookkeeping for readers that track where
/// partitions end, not an error to log.
pub fn is_end_of_partition(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::KafkaError as E;
    matches!(
        error,
        E::PartitionEOF(_) | E::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
    )
}

/// The value of header `name` of `message` as text, if it has one (most messages have no
/// headers, which costs one check).
pub fn header_text<M: rdkafka::Message>(message: &M, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    message
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Client settings for `brokers` plus the pipeline's pass-through librdkafka properties.
pub fn client_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config.set("log_level", "3");
    for (key, value) in properties {
        config.set(key, value);
    }
    config
}

/// The given settings with a producer's idempotence (`acks=all`, retries without duplicates).
pub fn idempotent_settings(client: &ClientConfig) -> ClientConfig {
    let mut config = client.clone();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5");
    config
}

/// An idempotent producer ([`idempotent_settings`]) with the given settings.
pub fn idempotent_producer(
    client: &ClientConfig,
    role: &'static str,
) -> Result<PolledProducer<ClientLog>, KafkaError> {
    let config = idempotent_settings(client);
    config
        .create_with_context(ClientLog)
        .map_err(|source| KafkaError::Client {
            role,
            brokers: config
                .get("bootstrap.servers")
                .unwrap_or_default()
                .to_string(),
            source,
        })
}
