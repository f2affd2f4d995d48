//! What a runner reads: the group's changes and micro-batches of `kafka_records` rows.

pub mod batch;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;

use crate::common::summary::OffsetJump;
use crate::common::{Offsets, Watermarks};

pub use batch::{MicroBatch, RawRecord};

/// What a runner reads: the group's changes and micro-batches of its partitions. The Kafka
/// consumer in production (`campaign_kafka::source::KafkaSource`); a scripted log in the
/// simulation tests.
#[async_trait]
pub trait Source: Send {
    /// The next event; `None` once the source has stopped. Batches read before the last
    /// [`Source::rewind`] are left out.
    async fn next(&mut self) -> Option<Result<SourceEvent, SourceError>>;

    /// Reads `partitions` again from `offsets` (from `start_from` where it has none): their
    /// tables were moved on by another runner, and this runner dropped what it had read.
    fn rewind(&mut self, partitions: BTreeSet<i32>, offsets: Offsets);

    /// Tells the group where the tables now stand, for lag monitoring only (progress lives in
    /// the tables).
    fn commit_group_offsets(&self, offsets: &Offsets);

    /// How far behind its end each held partition is read, as last reported.
    fn lag(&self) -> BTreeMap<i32, i64>;

    /// Members of the group (`None` when the group does not answer).
    fn group_members(&self) -> Option<usize>;

    /// Where each partition of `from` (partition -> the offset the tables resume it at) starts
    /// and ends; partitions whose range cannot be told are missing from the answer.
    async fn partition_ends(
        &self,
        from: &BTreeMap<i32, Option<i64>>,
    ) -> Result<BTreeMap<i32, Watermarks>, SourceError>;

    /// Stops reading after the batch in hand.
    fn stop(&self);
}

/// What the source hands to the pipeline, in order.
#[derive(Debug)]
pub enum SourceEvent {
    /// Messages of the assigned partitions.
    Batch(MicroBatch),
    /// The group took the partitions away: what was read from them and not committed must be
    /// dropped (another runner may be reading them now).
    Revoked,
    /// The group assigned these partitions; the batches that follow read them from where the
    /// tables stood when they were assigned.
    Assigned {
        /// Every partition now held.
        partitions: BTreeSet<i32>,
    },
    /// A held partition is read on at `jump.to` instead of where the tables stand (`run
    /// --accept-offset-jumps`); the batches that follow read it from there.
    Jumped {
        /// The partition.
        partition: i32,
        /// From where to where.
        jump: OffsetJump,
    },
}

/// Errors of the source, naming the topic.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The consumer could not be created or subscribed.
    #[error("consumer for topic {topic}")]
    Consumer {
        topic: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The reading thread could not be started.
    #[error("starting the reading thread for topic {topic}")]
    Thread {
        topic: String,
        #[source]
        source: std::io::Error,
    },
    /// Where assigned partitions resume could not be read from the tables.
    #[error("topic {topic}: reading where partitions {partitions:?} resume from the tables")]
    Resume {
        topic: String,
        partitions: Vec<i32>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The tables hold a partition further than the topic's end: the topic is not the one they
    /// read (deleted and created again, or truncated).
    #[error(
        "topic {topic} partition {partition} ends at offset {end}, but the tables hold its events up \
         to offset {tables}: the topic was deleted and created again, or truncated, after they were \
         read. Nothing was read from it, so none of its events is skipped in silence; `run \
         --accept-offset-jumps` reads it from its start into these tables and records the jump"
    )]
    BeyondEnd {
        topic: String,
        partition: i32,
        /// Where the tables resume the partition.
        tables: i64,
        /// The partition's end (high watermark) on the broker.
        end: i64,
    },
    /// Events the tables never absorbed are no longer on the broker (retention or compaction
    /// deleted them first).
    #[error(
        "topic {topic} partition {partition} holds nothing before offset {first}, but the tables hold \
         its events only up to offset {tables}: {} events were deleted from the topic before they \
         were read. Nothing was read from it; `run --accept-offset-jumps` resumes at offset {first} \
         and records the jump",
        first - tables
    )]
    Gone {
        topic: String,
        partition: i32,
        /// Where the tables resume the partition.
        tables: i64,
        /// The first offset the partition still holds.
        first: i64,
    },
    /// Where partitions end could not be read.
    #[error("topic {topic}: reading where partitions end")]
    Ends {
        topic: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Building the Arrow batch failed.
    #[error("building a micro-batch of {topic}")]
    Arrow {
        topic: String,
        #[source]
        source: arrow::error::ArrowError,
    },
}
