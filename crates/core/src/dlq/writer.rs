//! Produces dead letter records without waiting per record, and waits for all of them before
//! the Iceberg commit that moves past their offsets.

use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;

use super::record::DeadLetter;
use crate::common::Offsets;

/// Where dead letter records go: the dead letter topic through an idempotent producer (the
/// binary's `dlq::KafkaDelivery`), or a simulated topic in the simulation tests.
#[async_trait]
pub trait Delivery: Send {
    /// Queues one record; [`Delivery::flush`] confirms it.
    async fn queue(&mut self, value: Vec<u8>, key: Option<&[u8]>) -> Result<(), DeliveryError>;
    /// Waits until every queued record is acknowledged; the first failure is returned.
    async fn flush(&mut self) -> Result<(), DeliveryError>;
}

/// A dead letter could not be delivered: the delivery's own error (the producer's, naming the
/// topic, in production).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DeliveryError(Box<dyn std::error::Error + Send + Sync>);

impl DeliveryError {
    /// Wraps the delivery's error.
    pub fn new(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        DeliveryError(Box::new(source))
    }
}

/// Writer to one dead letter topic: sends each rejected message once per runner until a commit
/// moves past it.
pub struct DeadLetterWriter<D> {
    delivery: D,
    /// Records sent since start, by category.
    counts: BTreeMap<String, u64>,
    /// Source coordinates (topic, partition, offset) dead-lettered that no commit has moved
    /// past yet: the source reads them again after a rewind (a failed or fenced commit), and
    /// they must not be sent twice.
    unsettled: HashSet<(String, i32, i64)>,
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
    ) -> Result<bool, DeliveryError> {
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
    pub async fn flush(&mut self) -> Result<(), DeliveryError> {
        self.delivery.flush().await
    }

    /// Forgets the records whose source messages are behind `resume` (where the held
    /// partitions resume from the tables): the source never hands those on again.
    pub fn settle(&mut self, resume: &Offsets) {
        self.unsettled
            .retain(|(topic, partition, offset)| !resume.passed(topic, *partition, *offset));
    }

    /// Records sent since start, by category.
    pub fn counts(&self) -> &BTreeMap<String, u64> {
        &self.counts
    }
}
