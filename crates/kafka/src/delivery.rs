//! The dead letter topic as the runner's [`Delivery`]: an idempotent producer.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use rdkafka::ClientConfig;

use crate::dlq::{DeadLetterWriter, Delivery, DeliveryError, MAX_RECORD_BYTES};
use crate::polled_producer::{DeliveryFuture, PolledProducer};
use crate::KafkaError;

/// The dead letter topic, through an idempotent producer.
pub struct KafkaDelivery {
    producer: PolledProducer<crate::client_log::ClientLog>,
    topic: String,
    pending: Vec<DeliveryFuture>,
}

impl KafkaDelivery {
    /// An idempotent producer to `topic`.
    pub fn new(client: &ClientConfig, topic: &str) -> Result<Self, KafkaError> {
        // A dead letter carries its source message whole, plus its reason and coordinates:
        // larger than any message the source topic takes (1 MB by default).
        let mut client = client.clone();
        client.set("message.max.bytes", MAX_RECORD_BYTES.to_string());
        let producer = crate::idempotent_producer(&client, "dead letter producer")?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            pending: Vec::new(),
        })
    }
}

#[async_trait]
impl Delivery for KafkaDelivery {
    async fn queue(&mut self, value: Vec<u8>, key: Option<&[u8]>) -> Result<(), DeliveryError> {
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
                    return Err(DeliveryError::new(KafkaError::Delivery {
                        topic: self.topic.clone(),
                        source,
                    }))
                }
            }
        }
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        for delivery in self.pending.drain(..) {
            let outcome = delivery.await.map_err(|_| {
                DeliveryError::new(KafkaError::Delivery {
                    topic: self.topic.clone(),
                    source: RdKafkaError::Canceled,
                })
            })?;
            outcome.map_err(|(source, _)| {
                DeliveryError::new(KafkaError::Delivery {
                    topic: self.topic.clone(),
                    source,
                })
            })?;
        }
        Ok(())
    }
}

impl KafkaDelivery {
    /// A dead letter writer to `topic` through an idempotent producer.
    pub fn writer(
        client: &ClientConfig,
        topic: &str,
    ) -> Result<DeadLetterWriter<Self>, KafkaError> {
        Ok(DeadLetterWriter::to(KafkaDelivery::new(client, topic)?))
    }
}
