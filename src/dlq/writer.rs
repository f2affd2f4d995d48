//! Produces dead letter records without waiting per record, and waits for all of them before
//! the Iceberg commit that moves past their offsets.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::record::DeadLetter;
use crate::common::Offsets;
use crate::kafka::KafkaError;

/// Where dead letter records go: the dead letter topic through an idempotent producer
/// ([`KafkaDelivery`]), or a simulated topic in the simulation tests.
#[async_trait]
pub trait Delivery: Send {
    /// Queues one record; [`Delivery::flush`] confirms it.
    async fn queue(&mut self, value: Vec<u8>, key: Option<&[u8]>) -> Result<(), KafkaError>;
    /// Waits until every queued record is acknowledged; the first failure is returned.
    async fn flush(&mut self) -> Result<(), KafkaError>;
}

/// The dead letter topic, through an idempotent producer.
pub struct KafkaDelivery {
    producer: FutureProducer<crate::kafka::client_log::ClientLog>,
    topic: String,
    pending: Vec<DeliveryFuture>,
}

impl KafkaDelivery {
    /// An idempotent producer to `topic`.
    pub fn new(client: &ClientConfig, topic: &str) -> Result<Self, KafkaError> {
        // A dead letter carries its source message whole, plus its reason and coordinates:
        // larger than any message the source topic takes (1 MB by default).
        let mut client = client.clone();
        client.set("message.max.bytes", super::MAX_RECORD_BYTES.to_string());
        let producer = crate::kafka::idempotent_producer(&client, "dead letter producer")?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            pending: Vec::new(),
        })
    }
}

#[async_trait]
impl Delivery for KafkaDelivery {
    async fn queue(&mut self, value: Vec<u8>, key: Option<&[u8]>) -> Result<(), KafkaError> {
        loop {
            let mut message = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&value);
            if let Some(key) = key {
                message = message.key(key);
            }
            match self.producer.send_result(message) {
                Ok(delivery) => {
                    self.pending.push(delivery);
                    return Ok(());
                }
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // librdkafka's queue is full: wait for what is in flight, then retry.
                    self.flush().await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((source, _)) => {
                    return Err(KafkaError::Delivery {
                        topic: self.topic.clone(),
                        source,
                    })
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), KafkaError> {
        for delivery in self.pending.drain(..) {
            let outcome = delivery.await.map_err(|_| KafkaError::Delivery {
                topic: self.topic.clone(),
                source: RdKafkaError::Canceled,
            })?;
            outcome.map_err(|(source, _)| KafkaError::Delivery {
                topic: self.topic.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Writer to one dead letter topic: sends each rejected message once per runner until a commit
/// moves past it.
pub struct DeadLetterWriter<D = KafkaDelivery> {
    delivery: D,
    /// Records sent since start, by category.
    counts: BTreeMap<String, u64>,
    /// Source coordinates (topic, partition, offset) dead-lettered that no commit has moved
    /// past yet: the source reads them again after a rewind (a failed or fenced commit), and
    /// they must not be sent twice.
    unsettled: HashSet<(String, i32, i64)>,
}

impl DeadLetterWriter<KafkaDelivery> {
    /// An idempotent producer to `topic`.
    pub fn new(client: &ClientConfig, topic: &str) -> Result<Self, KafkaError> {
        Ok(Self::to(KafkaDelivery::new(client, topic)?))
    }
}

impl<D: Delivery> DeadLetterWriter<D> {
    /// A writer to `delivery`.
    pub fn to(delivery: D) -> Self {
        Self {
            delivery,
            counts: BTreeMap::new(),
            unsettled: HashSet::new(),
        }
    }

    /// Queues one record keyed by the original key; delivery is confirmed by [`Self::flush`].
    /// `false` when this runner already sent the record's source message since the last commit
    /// that moved past it (the source read it again after a rewind): nothing is sent.
    pub async fn send(
        &mut self,
        record: &DeadLetter,
        key: Option<&[u8]>,
    ) -> Result<bool, KafkaError> {
        let source = &record.source;
        let coordinates = (source.topic.clone(), source.partition, source.offset);
        if self.unsettled.contains(&coordinates) {
            return Ok(false);
        }
        self.delivery.queue(record.to_json(), key).await?;
        *self.counts.entry(record.category.clone()).or_default() += 1;
        self.unsettled.insert(coordinates);
        Ok(true)
    }

    /// Waits until every queued record is acknowledged; the first failure is returned.
    pub async fn flush(&mut self) -> Result<(), KafkaError> {
        self.delivery.flush().await
    }

    /// Forgets the records whose source messages are behind `resume` (where the held
    /// partitions resume from the tables): the source never hands those on again.
    pub fn settle(&mut self, resume: &Offsets) {
        self.unsettled.retain(|(topic, partition, offset)| {
            resume
                .get(topic, *partition)
                .is_none_or(|next| *offset >= next)
        });
    }

    /// Records sent since start, by category.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }
}
