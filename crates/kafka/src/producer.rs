//! `EventProducer`: sends campaign events keyed by campaign_id, idempotently, reporting every
//! delivery failure to the caller.

use std::time::Duration;

use futures::future::try_join_all;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use super::KafkaError;
use campaign_generator::event::CampaignEvent;

/// How long one message may wait for delivery before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// What bounds a producer's waiting and memory.
#[derive(Debug, Clone, Copy)]
pub struct ProducerBounds {
    /// How long a message may wait for its acknowledgement before librdkafka fails it.
    pub delivery_timeout: Duration,
    /// Bytes of messages queued and not yet acknowledged (librdkafka's default if `None`).
    pub queue_bytes: Option<u64>,
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The partition it went to.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// Producer of campaign events and raw records to one topic.
pub struct EventProducer {
    producer: crate::polled_producer::PolledProducer<crate::client_log::ClientLog>,
    topic: String,
}

impl EventProducer {
    /// An idempotent producer to `topic` with the given client settings.
    pub fn new(config: &ClientConfig, topic: &str) -> Result<Self, KafkaError> {
        Self::bounded(
            config,
            topic,
            ProducerBounds {
                delivery_timeout: DELIVERY_TIMEOUT,
                queue_bytes: None,
            },
        )
    }

    /// An idempotent producer to `topic` whose messages fail after `bounds.delivery_timeout`
    /// and whose queue holds at most `bounds.queue_bytes`.
    pub fn bounded(
        config: &ClientConfig,
        topic: &str,
        bounds: ProducerBounds,
    ) -> Result<Self, KafkaError> {
        let mut config = config.clone();
        config.set("compression.type", "lz4").set(
            "message.timeout.ms",
            bounds.delivery_timeout.as_millis().to_string(),
        );
        if let Some(bytes) = bounds.queue_bytes {
            config.set(
                "queue.buffering.max.kbytes",
                (bytes / 1024).max(1).to_string(),
            );
        }
        let producer = super::idempotent_producer(&config, "producer")?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Sends one event keyed by its campaign_id and waits for its delivery.
    pub async fn send_event(&self, event: &CampaignEvent) -> Result<(), KafkaError> {
        self.send_record(event.campaign_id.as_bytes(), &event.to_payload())
            .await
    }

    /// Sends events keyed by campaign_id, all in flight at once; fails if any delivery fails.
    pub async fn send_batch(&self, events: &[CampaignEvent]) -> Result<(), KafkaError> {
        let payloads: Vec<Vec<u8>> = events.iter().map(CampaignEvent::to_payload).collect();
        self.send_records(
            events
                .iter()
                .zip(&payloads)
                .map(|(e, p)| (e.campaign_id.as_bytes(), p.as_slice())),
        )
        .await
    }

    /// Sends one raw record (any key and payload bytes) and waits for its delivery.
    pub async fn send_record(&self, key: &[u8], payload: &[u8]) -> Result<(), KafkaError> {
        self.send_records(std::iter::once((key, payload))).await
    }

    /// Sends raw records, all in flight at once; fails if any delivery fails.
    pub async fn send_records<'a>(
        &self,
        records: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), KafkaError> {
        let deliveries = records.into_iter().map(|(key, payload)| {
            let record = FutureRecord::to(&self.topic).key(key).payload(payload);
            // Queue::Timeout waits for room in librdkafka's queue instead of failing when it is full.
            let delivery = self.producer.send(record, Timeout::After(DELIVERY_TIMEOUT));
            async move { delivery.await.map_err(|(source, _)| source) }
        });
        try_join_all(deliveries)
            .await
            .map_err(|source| KafkaError::Delivery {
                topic: self.topic.clone(),
                source,
            })?;
        Ok(())
    }

    /// Queues one raw record without waiting for it: the returned future resolves to the
    /// partition and offset it landed at. Dropping the future does not cancel the delivery, but
    /// dropping the producer does: await the deliveries (or [`Self::flush`]) first.
    pub fn queue_record(
        &self,
        key: &[u8],
        payload: &[u8],
    ) -> Result<impl std::future::Future<Output = Result<(i32, i64), KafkaError>>, KafkaError> {
        let delivery = self.queue(Some(key), payload)?;
        Ok(async move { delivery.await.map(|d| (d.partition, d.offset)) })
    }

    /// Queues one record, with a key or without (the partitioner then spreads them), without
    /// waiting: fails at once when the queue is full.
    pub fn queue(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<impl std::future::Future<Output = Result<Delivered, KafkaError>>, KafkaError> {
        let record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
        let record = match key {
            Some(key) => record.key(key),
            None => record,
        };
        let topic = self.topic.clone();
        let delivery =
            self.producer
                .send_result(record)
                .map_err(|(source, _)| KafkaError::Delivery {
                    topic: topic.clone(),
                    source,
                })?;
        Ok(async move {
            match delivery.await {
                Ok(Ok(delivered)) => Ok(Delivered {
                    partition: delivered.partition,
                    offset: delivered.offset,
                }),
                Ok(Err((source, _))) => Err(KafkaError::Delivery { topic, source }),
                Err(_) => Err(KafkaError::Delivery {
                    topic,
                    source: rdkafka::error::KafkaError::Canceled,
                }),
            }
        })
    }

    /// Whether `error` (of one of this producer's deliveries) means the producer delivers
    /// nothing more and must be replaced: librdkafka raised a fatal error, or the broker
    /// refused its producer id or epoch (after an outage the epoch bump of KIP-360 can be
    /// answered so), which no retry of the same producer gets past.
    pub fn is_ended_by(&self, error: &KafkaError) -> bool {
        use rdkafka::error::KafkaError as Rd;
        use rdkafka::types::RDKafkaErrorCode as Code;
        if self.producer.client().fatal_error().is_some() {
            return true;
        }
        let KafkaError::Delivery { source, .. } = error else {
            return false;
        };
        matches!(
            source.rdkafka_error_code(),
            Some(
                Code::Fatal
                    | Code::ProducerFenced
                    | Code::InvalidProducerEpoch
                    | Code::UnknownProducerId
                    | Code::OutOfOrderSequenceNumber
                    | Code::InvalidProducerIdMapping
            )
        ) || matches!(source, Rd::Transaction(_))
    }

    /// Waits at most `timeout` until every queued message is delivered.
    pub fn flush_within(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer
            .flush(Timeout::After(timeout))
            .map_err(|source| KafkaError::Delivery {
                topic: self.topic.clone(),
                source,
            })
    }

    /// Waits until every queued message is delivered.
    pub fn flush(&self) -> Result<(), KafkaError> {
        self.producer
            .flush(Timeout::After(DELIVERY_TIMEOUT))
            .map_err(|source| KafkaError::Delivery {
                topic: self.topic.clone(),
                source,
            })
    }
}
