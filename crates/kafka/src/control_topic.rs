//! The control topic as the runners' [`Control`] (`commit.mode: one_committer`): an idempotent
//! producer, and a reader outside the consumer group on a thread of its own, reading the topic's
//! one partition from where it ended when the runner started (what was sent before has been
//! answered, or its sender landed it itself).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message, Offset};
use tokio::sync::mpsc;

use crate::client_log::ClientLog;
use crate::KafkaError;
use campaign_core::control::{Control, ControlError, ControlMessage};

/// Messages read ahead of the runner; the reader waits while this many are unread.
const READ_AHEAD: usize = 1024;
/// How long a send waits for its delivery.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the reader waits to learn where the topic ends.
const END_TIMEOUT: Duration = Duration::from_secs(10);

/// The control topic of one pipeline.
pub struct KafkaControl {
    producer: crate::polled_producer::PolledProducer<ClientLog>,
    topic: String,
    messages: mpsc::Receiver<ControlMessage>,
    stop: Arc<AtomicBool>,
}

impl KafkaControl {
    /// Connects to `topic` (one partition, created by `setup`) and reads it from its end.
    pub fn start(client: &ClientConfig, group_id: &str, topic: &str) -> Result<Self, KafkaError> {
        let mut client = client.clone();
        if client.get("fetch.wait.max.ms").is_none() {
            client.set(
                "fetch.wait.max.ms",
                crate::source::quirks::FETCH_WAIT_MAX_MS,
            );
        }
        let ends = crate::ends::partition_ends(
            &client,
            group_id,
            topic,
            &BTreeMap::from([(0, None)]),
            END_TIMEOUT,
        )?;
        let Some(end) = ends.get(&0).map(|marks| marks.high) else {
            return Err(KafkaError::Timeout {
                what: format!("where control topic {topic} ends"),
                brokers: client
                    .get("bootstrap.servers")
                    .unwrap_or_default()
                    .to_string(),
                seconds: END_TIMEOUT.as_secs(),
            });
        };
        let (consumer, brokers) =
            crate::assigning_consumer(&client, group_id, "control topic reader")?;
        crate::assign_at(&consumer, topic, &brokers, [(0, Offset::Offset(end))])?;
        let producer = crate::idempotent_producer(&client, "control topic producer")?;
        let (sender, messages) = mpsc::channel(READ_AHEAD);
        let stop = Arc::new(AtomicBool::new(false));
        let reading = stop.clone();
        let name = topic.to_string();
        std::thread::Builder::new()
            .name("control-reader".into())
            .spawn(move || read(consumer, &name, &sender, &reading))
            .map_err(|e| KafkaError::Admin {
                topic: topic.to_string(),
                message: format!("cannot start its reader thread: {e}"),
            })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            messages,
            stop,
        })
    }

    fn error(
        &self,
        action: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ControlError {
        ControlError {
            topic: self.topic.clone(),
            action: action.to_string(),
            source: Box::new(source),
        }
    }
}

impl Drop for KafkaControl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The reader thread: every message of the partition, parsed, until told to stop or the runner
/// is gone. A message that is not a control message is logged and passed over.
fn read(
    consumer: BaseConsumer<ClientLog>,
    topic: &str,
    sender: &mpsc::Sender<ControlMessage>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let parsed = serde_json::from_slice(message.payload().unwrap_or_default());
                match parsed {
                    Ok(parsed) => {
                        if sender.blocking_send(parsed).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(
                            topic,
                            offset = message.offset(),
                            "not a control message, passed over: {e}"
                        );
                    }
                }
            }
            Some(Err(e)) if crate::is_end_of_partition(&e) => {}
            // The client logs its own errors and reconnects.
            Some(Err(_)) | None => {}
        }
    }
}

#[async_trait]
impl Control for KafkaControl {
    async fn send(&mut self, message: &ControlMessage) -> Result<(), ControlError> {
        let payload = serde_json::to_vec(message).map_err(|e| self.error("encoding", e))?;
        let record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(&payload);
        self.producer
            .send(record, SEND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| self.error("sending", e))
    }

    async fn next(&mut self) -> Option<ControlMessage> {
        self.messages.recv().await
    }

    async fn next_within(&mut self, patience: Duration) -> Option<ControlMessage> {
        tokio::time::timeout(patience, self.messages.recv())
            .await
            .ok()
            .flatten()
    }

    fn try_next(&mut self) -> Option<ControlMessage> {
        self.messages.try_recv().ok()
    }
}
