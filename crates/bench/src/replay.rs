//! The core's runner over micro-batches made in advance: the product's own path from the
//! parsing SQL to both tables' commits, with no broker in the measure.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::common::{Offsets, Watermarks};
use crate::source::{MicroBatch, Source, SourceError, SourceEvent};
use campaign_core::dlq::{Delivery, DeliveryError};

/// A source that holds every partition from the start and hands on one prepared micro-batch per
/// step, then stops. The runner positions it once, when it takes the partitions over; with one
/// runner nothing takes them away, so a later rewind (a commit failed or was fenced, and the
/// batches since must be read again) is counted for the bench to refuse its figures.
pub struct ReplaySource {
    assignment: Option<BTreeSet<i32>>,
    batches: VecDeque<MicroBatch>,
    handed_on: bool,
    rewinds: Arc<AtomicU64>,
}

impl ReplaySource {
    /// Hands on `partitions` as assigned, then `batches` in order.
    pub fn new(partitions: BTreeSet<i32>, batches: Vec<MicroBatch>) -> Self {
        Self {
            assignment: Some(partitions),
            batches: batches.into(),
            handed_on: false,
            rewinds: Arc::default(),
        }
    }

    /// Counts the rewinds asked for once batches were handed on, readable while the runner owns
    /// the source.
    pub fn rewinds(&self) -> Arc<AtomicU64> {
        self.rewinds.clone()
    }
}

#[async_trait]
impl Source for ReplaySource {
    async fn next(&mut self) -> Option<Result<SourceEvent, SourceError>> {
        if let Some(partitions) = self.assignment.take() {
            return Some(Ok(SourceEvent::Assigned { partitions }));
        }
        let batch = self.batches.pop_front()?;
        self.handed_on = true;
        Some(Ok(SourceEvent::Batch(batch)))
    }

    fn rewind(&mut self, _partitions: BTreeSet<i32>, _offsets: Offsets) {
        if self.handed_on {
            self.rewinds.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn commit_group_offsets(&self, _offsets: &Offsets) {}

    fn lag(&self) -> BTreeMap<i32, i64> {
        BTreeMap::new()
    }

    fn group_members(&self) -> Option<usize> {
        Some(1)
    }

    async fn partition_ends(
        &self,
        _from: &BTreeMap<i32, Option<i64>>,
    ) -> Result<BTreeMap<i32, Watermarks>, SourceError> {
        // Asked only by `--until-caught-up` runs, which the bench's replays are not.
        Ok(BTreeMap::new())
    }

    fn stop(&self) {}
}

/// A dead letter topic that drops what it is sent: the runner's summary counts the dead
/// letters, and the bench measures the tables.
#[derive(Debug, Default)]
pub struct DroppedDeadLetters;

#[async_trait]
impl Delivery for DroppedDeadLetters {
    async fn queue(&mut self, _value: Vec<u8>, _key: Option<&[u8]>) -> Result<(), DeliveryError> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), DeliveryError> {
        Ok(())
    }
}
