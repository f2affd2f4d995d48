//! `TopicReader`: reads every partition of a topic from the beginning, tells when each has been
//! read to its end, and can keep following it (the DLQ tools and the replay ledger use it).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset};

use super::client_log::ClientLog;
use super::KafkaError;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a read to the end may see neither a message nor an end of partition before it gives
/// up: the broker is not answering.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// What one poll produced.
#[derive(Debug)]
pub enum ReadStep {
    /// A message.
    Message(OwnedMessage),
    /// Every partition has been read to its end at least once (reported once per reader).
    CaughtUp,
    /// Nothing arrived within the poll timeout.
    Idle,
}

/// A consumer assigned to every partition of one topic from the beginning, committing nothing.
pub struct TopicReader {
    consumer: BaseConsumer<ClientLog>,
    topic: String,
    brokers: String,
    /// Partitions not yet read to their end.
    open: BTreeSet<i32>,
    caught_up_reported: bool,
}

impl TopicReader {
    /// Opens `topic` in consumer group `group_id`; `Ok(None)` when the topic does not exist.
    ///
    /// The end of each partition comes from end-of-partition events, not ListOffsets: tansu 0.6
    /// answers ListOffsets(latest) with a wrong offset while its fetch high watermark is right.
    pub fn open(
        client: &ClientConfig,
        group_id: &str,
        topic: &str,
    ) -> Result<Option<Self>, KafkaError> {
        let (consumer, brokers) = super::assigning_consumer(client, group_id, "reader")?;
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|source| KafkaError::Request {
                topic: topic.to_string(),
                what: "the metadata request",
                brokers: brokers.clone(),
                source: Box::new(source),
            })?;
        let partitions: BTreeSet<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Ok(None);
        }
        super::assign_at(
            &consumer,
            topic,
            &brokers,
            partitions.iter().map(|p| (*p, Offset::Beginning)),
        )?;
        Ok(Some(Self {
            consumer,
            topic: topic.to_string(),
            brokers,
            open: partitions,
            caught_up_reported: false,
        }))
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Waits up to `timeout` for the next message (blocking the calling thread).
    pub fn poll(&mut self, timeout: Duration) -> Result<ReadStep, KafkaError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.consumer.poll(left) {
                Some(Ok(message)) => return Ok(ReadStep::Message(message.detach())),
                Some(Err(RdKafkaError::PartitionEOF(partition))) => {
                    self.open.remove(&partition);
                    if self.open.is_empty() && !self.caught_up_reported {
                        self.caught_up_reported = true;
                        return Ok(ReadStep::CaughtUp);
                    }
                }
                Some(Err(RdKafkaError::Global(RDKafkaErrorCode::PartitionEOF))) => {}
                Some(Err(source)) => {
                    return Err(KafkaError::Delivery {
                        topic: self.topic.clone(),
                        source,
                    })
                }
                None => return Ok(ReadStep::Idle),
            }
            if Instant::now() >= deadline {
                return Ok(ReadStep::Idle);
            }
        }
    }

    /// Calls `each` for every message up to the end of every partition, then returns.
    pub fn read_to_end(
        &mut self,
        mut each: impl FnMut(OwnedMessage) -> Result<(), KafkaError>,
    ) -> Result<(), KafkaError> {
        let mut last_progress = Instant::now();
        loop {
            match self.poll(Duration::from_millis(500))? {
                ReadStep::Message(message) => {
                    last_progress = Instant::now();
                    each(message)?;
                }
                ReadStep::CaughtUp => return Ok(()),
                ReadStep::Idle if self.caught_up_reported => return Ok(()),
                ReadStep::Idle if last_progress.elapsed() > STALL_LIMIT => {
                    return Err(KafkaError::Timeout {
                        what: format!(
                            "reading {} to its end (partitions {:?} not finished)",
                            self.topic, self.open
                        ),
                        brokers: self.brokers.clone(),
                        seconds: STALL_LIMIT.as_secs(),
                    })
                }
                ReadStep::Idle => {}
            }
        }
    }
}
