//! A producer whose delivery reports are served by a thread that sleeps while none come.
//!
//! rdkafka's `FutureProducer` serves them from a thread that calls `poll` in rounds of 100 ms,
//! and `poll` waits in whole milliseconds, the time left truncated: the last millisecond of
//! every round is spent polling without waiting, over and over, so each producer keeps a core
//! busy about one part in a hundred, however idle. Here the rounds are a second long, so that spin is
//! a tenth as long; reports are served as they arrive whatever the round's length.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::future_producer::{Delivery, OwnedDeliveryResult};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureRecord, Producer, ProducerContext};
use rdkafka::util::{IntoOpaque, Timeout};
use rdkafka::ClientConfig;
use tokio::sync::oneshot;

/// How long one round of the delivery thread's `poll` lasts: the longest a dropped producer's
/// thread (and with it the client) outlives it.
const ROUND: Duration = Duration::from_secs(1);

/// The name of the thread that serves a producer's delivery reports.
pub const DELIVERY_THREAD: &str = "kafka-delivery";

/// How long [`PolledProducer::send`] waits before trying a full queue again.
const FULL_QUEUE_PAUSE: Duration = Duration::from_millis(100);

/// A producer whose sends resolve when the broker acknowledges (or refuses) the record, as
/// rdkafka's `FutureProducer` does.
pub struct PolledProducer<C: ClientContext + 'static> {
    producer: Arc<BaseProducer<Deliveries<C>>>,
    stop: Arc<AtomicBool>,
}

/// The outcome of one queued record, when the broker has answered.
pub struct DeliveryFuture {
    answer: oneshot::Receiver<OwnedDeliveryResult>,
}

/// The record's outcome was never reported: the producer was dropped before it.
#[derive(Debug, thiserror::Error)]
#[error("the producer was dropped before the delivery was reported")]
pub struct Canceled;

impl Future for DeliveryFuture {
    type Output = Result<OwnedDeliveryResult, Canceled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer).poll(cx).map_err(|_| Canceled)
    }
}

/// The client's context (logs, errors, statistics) with each record's delivery reported to its
/// [`DeliveryFuture`].
pub struct Deliveries<C> {
    inner: C,
}

impl<C: ClientContext> ClientContext for Deliveries<C> {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = C::ENABLE_REFRESH_OAUTH_TOKEN;

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.inner.log(level, facility, message);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.inner.stats_raw(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.inner.error(error, reason);
    }

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.inner.generate_oauth_token(oauthbearer_config)
    }
}

impl<C: ClientContext + 'static> ProducerContext for Deliveries<C> {
    type DeliveryOpaque = Box<oneshot::Sender<OwnedDeliveryResult>>;

    fn delivery(&self, result: &DeliveryResult<'_>, answer: Self::DeliveryOpaque) {
        let owned = match result {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp(),
            }),
            Err((error, message)) => Err((error.clone(), message.detach())),
        };
        // The receiver is gone when the caller stopped waiting: nothing to tell.
        let _ = answer.send(owned);
    }
}

impl<C: ClientContext + 'static> FromClientConfigAndContext<C> for PolledProducer<C> {
    fn from_config_and_context(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer = Arc::new(BaseProducer::from_config_and_context(
            config,
            Deliveries { inner: context },
        )?);
        let stop = Arc::new(AtomicBool::new(false));
        let polled = producer.clone();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(DELIVERY_THREAD.to_string())
            .spawn(move || {
                // `poll` serves reports as they come and returns only when the round is over.
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(ROUND);
                }
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("cannot start the delivery thread: {e}"))
            })?;
        Ok(Self { producer, stop })
    }
}

impl<C: ClientContext + 'static> PolledProducer<C> {
    /// Queues `record`: the future resolves with its delivery. Fails at once when librdkafka's
    /// queue is full.
    // The shapes of rdkafka's `FutureProducer`, whose callers this producer serves unchanged.
    #[allow(clippy::result_large_err)]
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<DeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (tell, answer) = oneshot::channel();
        self.producer
            .send(with_answer(record, Box::new(tell)))
            .map(|()| DeliveryFuture { answer })
            .map_err(|(error, record)| (error, without_answer(record)))
    }

    /// Queues `record`, waiting up to `queue_timeout` for room in a full queue, and waits for
    /// its delivery.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: impl Into<Timeout>,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let queue_timeout = queue_timeout.into();
        let started = Instant::now();
        let mut record = record;
        loop {
            match self.send_result(record) {
                // The client outlives `self`, so every queued record's delivery is reported
                // (a purge reports it failed); a report lost anyway reads as canceled.
                Ok(delivery) => {
                    return match delivery.await {
                        Ok(result) => result,
                        Err(Canceled) => Err((KafkaError::Canceled, unreported())),
                    };
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if may_wait(queue_timeout, started) =>
                {
                    record = back;
                    tokio::time::sleep(FULL_QUEUE_PAUSE).await;
                }
                Err((error, back)) => return Err((error, owned(&back))),
            }
        }
    }

    /// Waits at most `timeout` until every queued record is delivered.
    pub fn flush(&self, timeout: Timeout) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }

    /// The client, for its fatal error and metadata.
    pub fn client(&self) -> &Client<Deliveries<C>> {
        self.producer.client()
    }
}

impl<C: ClientContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        // The thread ends with its round and drops the client then, as rdkafka's producer
        // does: records still queued are purged.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether a send that found the queue full may wait for room again.
fn may_wait(queue_timeout: Timeout, started: Instant) -> bool {
    match queue_timeout {
        Timeout::Never => true,
        Timeout::After(limit) => started.elapsed() < limit,
    }
}

/// `record` as the base producer takes it, carrying `answer` to its delivery report.
fn with_answer<'a, K, P, D>(record: FutureRecord<'a, K, P>, answer: D) -> BaseRecord<'a, K, P, D>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: IntoOpaque,
{
    BaseRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers: record.headers,
        delivery_opaque: answer,
    }
}

/// The record a refused send hands back, as the caller built it.
fn without_answer<'a, K, P, D>(record: BaseRecord<'a, K, P, D>) -> FutureRecord<'a, K, P>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: IntoOpaque,
{
    FutureRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers: record.headers,
    }
}

/// The message of a delivery whose report was lost: the record went with it.
fn unreported() -> OwnedMessage {
    OwnedMessage::new(
        None,
        None,
        String::new(),
        Timestamp::NotAvailable,
        -1,
        -1,
        None,
    )
}

/// A record that was never queued, as the message a failed delivery reports.
fn owned<K, P>(record: &FutureRecord<'_, K, P>) -> OwnedMessage
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    OwnedMessage::new(
        record.payload.map(|p| p.to_bytes().to_vec()),
        record.key.map(|k| k.to_bytes().to_vec()),
        record.topic.to_string(),
        record
            .timestamp
            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
        record.partition.unwrap_or(-1),
        0,
        record.headers.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_log::ClientLog;

    /// A producer to a port nothing listens on, giving up on a record after `timeout_ms`.
    fn unreachable(timeout_ms: &str) -> PolledProducer<ClientLog> {
        ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", timeout_ms)
            .set("log_level", "0")
            .create_with_context(ClientLog)
            .expect("producer")
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_delivered_is_reported_failed_with_its_contents() {
        let producer = unreachable("300");
        let record = FutureRecord::<[u8], [u8]>::to("letters")
            .key(b"k")
            .payload(b"{\"a\":1}");
        let (error, message) = producer
            .send(record, Duration::from_secs(5))
            .await
            .expect_err("nothing listens");
        assert_eq!(
            error,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
        );
        assert_eq!(message.payload(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(message.key(), Some(&b"k"[..]));
        assert_eq!(message.topic(), "letters");
    }

    #[tokio::test]
    async fn records_queued_without_waiting_are_each_reported() {
        let producer = unreachable("200");
        let deliveries: Vec<DeliveryFuture> = (0..3)
            .map(|i: u8| {
                producer
                    .send_result(FutureRecord::<[u8], [u8]>::to("letters").payload(&[i][..]))
                    .map_err(|(error, _)| error)
                    .expect("queued")
            })
            .collect();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            let (error, message) = delivery
                .await
                .expect("reported")
                .expect_err("nothing listens");
            assert_eq!(
                error,
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
            );
            assert_eq!(message.payload(), Some(&[i as u8][..]));
        }
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_by_send_result_and_waited_on_by_send() {
        let producer: PolledProducer<ClientLog> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "300")
            .set("queue.buffering.max.messages", "1")
            .set("log_level", "0")
            .create_with_context(ClientLog)
            .expect("producer");
        let record = || FutureRecord::<[u8], [u8]>::to("letters").payload(&b"x"[..]);
        let first = producer
            .send_result(record())
            .map_err(|(error, _)| error)
            .expect("room for one");
        let (error, _) = producer.send_result(record()).err().expect("queue full");
        assert_eq!(
            error,
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
        );
        // `send` waits for the first record to leave the queue (it times out), then queues.
        let second = producer.send(record(), Duration::from_secs(10)).await;
        assert!(first.await.expect("reported").is_err());
        assert_eq!(
            second.expect_err("nothing listens").0,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
        );
    }
}
