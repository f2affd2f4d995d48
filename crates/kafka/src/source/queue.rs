//! The source's own queue of fetched messages, taken out many at a time.
//!
//! rust-rdkafka hands out one message per poll, and each poll takes the queue's lock and reads
//! the clock several times (librdkafka's timeout and poll-interval bookkeeping, rust-rdkafka's
//! own): on a backlog that per-message overhead was most of the reading thread's time. Here
//! every assigned partition's fetch queue is forwarded to one queue of the source's, emptied
//! with `rd_kafka_consume_batch_queue`, which pays that once per call.
//!
//! Rebalance events stay on the consumer's own queue, which the reading thread still polls
//! through rust-rdkafka: served by the batch call instead, they would be acknowledged by
//! librdkafka itself, without the source's rebalance callback.

use std::ffi::{c_void, CString};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

/// Most messages one take returns: enough that the per-call costs vanish, few enough that a
/// rebalance waits for little work.
const TAKE_AT_ONCE: usize = 1024;

/// A queue the assigned partitions' fetched messages are forwarded to.
pub(super) struct MessageQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
}

// SAFETY: librdkafka's queues are locked internally and may be used from any thread.
unsafe impl Send for MessageQueue {}
// SAFETY: as above; `take` and `forward` only call librdkafka's thread-safe queue functions.
unsafe impl Sync for MessageQueue {}

impl MessageQueue {
    /// A new, empty queue of `consumer`'s client. It must be dropped before the consumer.
    pub(super) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<Self> {
        // SAFETY: the client pointer is valid while `consumer` lives.
        let queue = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
        NonNull::new(queue).map(|queue| Self { queue })
    }

    /// Sends what is fetched of `topic`'s `partition` from now on to this queue. Called before
    /// the partition is assigned, so that its fetching starts forwarded: librdkafka then keeps
    /// an application's forwarding until the partition is unassigned.
    pub(super) fn forward<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let Ok(topic) = CString::new(topic) else {
            return false;
        };
        // SAFETY: the client pointer is valid while `consumer` lives; the partition's queue
        // handle is released right after forwarding (the forwarding stays with the partition).
        unsafe {
            let partition_queue = rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            );
            if partition_queue.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(partition_queue, self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(partition_queue);
        }
        true
    }

    /// Replaces `taken`'s messages with those queued now, waiting up to `wait` for the first.
    pub(super) fn take(&self, wait: Duration, taken: &mut Taken) {
        taken.clear();
        self.take_queued(taken);
        if !taken.messages.is_empty() || wait.is_zero() {
            return;
        }
        // The batch call, given a timeout, waits for a full batch: the first message is waited
        // for alone, so that a slow stream's messages are handed on as they come.
        let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the queue is valid while `self` lives; the message returned, if any, is
        // owned by the caller.
        let first = unsafe { rd::rd_kafka_consume_queue(self.queue.as_ptr(), timeout) };
        if !first.is_null() {
            taken.messages.push(first);
            self.take_queued(taken);
        }
    }

    /// Appends to `taken` the messages queued now, without waiting.
    fn take_queued(&self, taken: &mut Taken) {
        let held = taken.messages.len();
        taken.messages.resize(held + TAKE_AT_ONCE, ptr::null_mut());
        // SAFETY: the queue is valid while `self` lives, and the array has room for the count
        // passed after `held`; librdkafka fills the first `count` of those entries with
        // messages the caller owns.
        let count = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                taken.messages.as_mut_ptr().add(held),
                TAKE_AT_ONCE,
            )
        };
        taken
            .messages
            .truncate(held + usize::try_from(count).unwrap_or(0));
    }
}

impl Drop for MessageQueue {
    fn drop(&mut self) {
        // SAFETY: the queue was created by `new` and is released once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// The messages of one [`MessageQueue::take`], released when taken again or dropped.
#[derive(Default)]
pub(super) struct Taken {
    messages: Vec<*mut rd::rd_kafka_message_t>,
}

impl Taken {
    /// Whether the last take returned nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages in queue order: a fetched message, a partition's end, or an error.
    pub(super) fn iter(&self) -> impl Iterator<Item = Result<RawMessage<'_>, KafkaError>> {
        self.messages.iter().filter_map(|&message| {
            let message = NonNull::new(message)?;
            // SAFETY: every pointer `take` kept is a message librdkafka returned, owned here
            // until `clear`.
            let err = unsafe { message.as_ref().err };
            Some(match err {
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(RawMessage {
                    message,
                    _taken: PhantomData,
                }),
                rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    // SAFETY: as above.
                    Err(KafkaError::PartitionEOF(unsafe {
                        message.as_ref().partition
                    }))
                }
                err => Err(KafkaError::MessageConsumption(err.into())),
            })
        })
    }

    fn clear(&mut self) {
        for message in self.messages.drain(..) {
            if !message.is_null() {
                // SAFETY: each message is released once, here.
                unsafe { rd::rd_kafka_message_destroy(message) };
            }
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A message of a [`Taken`], valid while it is.
pub(super) struct RawMessage<'a> {
    message: NonNull<rd::rd_kafka_message_t>,
    _taken: PhantomData<&'a Taken>,
}

impl RawMessage<'_> {
    fn raw(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: the message lives as long as the `Taken` this borrows.
        unsafe { self.message.as_ref() }
    }

    /// `len` bytes at `data`, or `None` for a null pointer.
    fn bytes(&self, data: *mut c_void, len: usize) -> Option<&[u8]> {
        // SAFETY: librdkafka's key and payload pointers hold `len` bytes while the message
        // lives.
        (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
    }
}

/// What the reading loop reads of a message, from either queue.
pub(super) trait Fetched {
    /// The message's partition.
    fn partition(&self) -> i32;
    /// The message's offset.
    fn offset(&self) -> i64;
    /// The record's timestamp in milliseconds, if it has one.
    fn timestamp_ms(&self) -> Option<i64>;
    /// The record's key.
    fn key(&self) -> Option<&[u8]>;
    /// The record's value.
    fn payload(&self) -> Option<&[u8]>;
    /// The value of the first header named `name`, as text.
    fn header_text(&self, name: &HeaderName) -> Option<String>;
}

/// A header's name, as both the Rust and the C side look it up.
pub(super) struct HeaderName {
    text: &'static str,
    c: CString,
}

impl HeaderName {
    /// `text` as a header name (one holding a NUL byte matches no header read from C).
    pub(super) fn new(text: &'static str) -> Self {
        Self {
            text,
            c: CString::new(text).unwrap_or_default(),
        }
    }
}

impl Fetched for RawMessage<'_> {
    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is valid (see `raw`).
        let timestamp = unsafe { rd::rd_kafka_message_timestamp(self.message.as_ptr(), &mut kind) };
        let available = kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        (available && timestamp != -1).then_some(timestamp)
    }

    fn key(&self) -> Option<&[u8]> {
        let raw = self.raw();
        self.bytes(raw.key, raw.key_len)
    }

    fn payload(&self) -> Option<&[u8]> {
        let raw = self.raw();
        self.bytes(raw.payload, raw.len)
    }

    fn header_text(&self, name: &HeaderName) -> Option<String> {
        if !super::headers::may_have_headers(self.message) {
            return None;
        }
        let mut headers = ptr::null_mut();
        let mut value: *const c_void = ptr::null();
        let mut size = 0usize;
        // SAFETY: the message is valid (see `raw`); the headers belong to it, and the value
        // points into them for `size` bytes while it lives.
        unsafe {
            if rd::rd_kafka_message_headers(self.message.as_ptr(), &mut headers)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || rd::rd_kafka_header_get(headers, 0, name.c.as_ptr(), &mut value, &mut size)
                    != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                || value.is_null()
            {
                return None;
            }
            let value = std::slice::from_raw_parts(value.cast::<u8>(), size);
            Some(String::from_utf8_lossy(value).into_owned())
        }
    }
}

impl Fetched for rdkafka::message::BorrowedMessage<'_> {
    fn partition(&self) -> i32 {
        Message::partition(self)
    }

    fn offset(&self) -> i64 {
        Message::offset(self)
    }

    fn timestamp_ms(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }

    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }

    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn header_text(&self, name: &HeaderName) -> Option<String> {
        crate::header_text(self, name.text)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};

    use super::super::headers::{layout_trusted, may_have_headers};
    use super::{Fetched, HeaderName, MessageQueue, Taken};

    const TOPIC: &str = "headers";
    const MARK: &str = "campaign-pipeline.replay-of";

    /// A message to produce: its payload and headers (name, value).
    struct Case {
        payload: Option<&'static [u8]>,
        headers: Vec<(&'static str, Option<&'static [u8]>)>,
    }

    impl Case {
        /// The mark's value the source must read from this message.
        fn mark(&self) -> Option<String> {
            self.headers
                .iter()
                .find(|(name, _)| *name == MARK)
                .and_then(|(_, value)| *value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        }
    }

    #[test]
    fn messages_without_headers_are_told_apart_unparsed_and_the_mark_is_read_from_the_others() {
        let cases = [
            Case {
                payload: Some(b"{}"),
                headers: vec![],
            },
            Case {
                payload: Some(b"{}"),
                headers: vec![(MARK, Some(b"campaign_events/0/5"))],
            },
            Case {
                payload: Some(b"{}"),
                headers: vec![("other", Some(b"x")), (MARK, Some(b"t/2/9"))],
            },
            Case {
                payload: Some(b"{}"),
                headers: vec![(MARK, None)],
            },
            Case {
                payload: Some(b"{}"),
                headers: vec![("other", Some(b""))],
            },
            Case {
                payload: Some(b""),
                headers: vec![],
            },
            Case {
                payload: None,
                headers: vec![],
            },
            Case {
                payload: Some(b"{\"a\":1}"),
                headers: vec![],
            },
        ];
        let cluster = MockCluster::new(1).expect("librdkafka's mock cluster");
        cluster.create_topic(TOPIC, 1, 1).expect("topic");
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", cluster.bootstrap_servers());
        let producer: BaseProducer = client.create().expect("producer");
        for case in &cases {
            let mut headers = OwnedHeaders::new();
            for (key, value) in &case.headers {
                headers = headers.insert(Header { key, value: *value });
            }
            let mut record = BaseRecord::<[u8], [u8]>::to(TOPIC)
                .key(b"k")
                .headers(headers);
            if let Some(payload) = case.payload {
                record = record.payload(payload);
            }
            producer.send(record).map_err(|(e, _)| e).expect("queued");
        }
        producer.flush(Duration::from_secs(30)).expect("delivered");

        let consumer: BaseConsumer = client
            .clone()
            .set("group.id", "headers-test")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let queue = MessageQueue::new(&consumer).expect("queue");
        assert!(queue.forward(&consumer, TOPIC, 0));
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(TOPIC, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&assignment).expect("assigned");

        let name = HeaderName::new(MARK);
        let mut read = Vec::new();
        let mut taken = Taken::default();
        let deadline = Instant::now() + Duration::from_secs(30);
        while read.len() < cases.len() && Instant::now() < deadline {
            let _ = consumer.poll(Duration::ZERO);
            queue.take(Duration::from_millis(100), &mut taken);
            for message in taken.iter().filter_map(Result::ok) {
                read.push((
                    message.offset(),
                    may_have_headers(message.message),
                    message.header_text(&name),
                ));
            }
        }
        assert_eq!(read.len(), cases.len(), "every message read back: {read:?}");
        assert_eq!(
            layout_trusted(),
            Some(true),
            "the mirror matches this librdkafka"
        );
        for (case, (offset, may_have, mark)) in cases.iter().zip(&read) {
            assert_eq!(*may_have, !case.headers.is_empty(), "offset {offset}");
            assert_eq!(*mark, case.mark(), "offset {offset}");
        }
    }
}
