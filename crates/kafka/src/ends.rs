//! Where partitions end, as fetches report it: the high watermark of a fetch answer, which
//! librdkafka caches per partition. ListOffsets is not asked: tansu 0.6 answers it wrongly.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{ClientConfig, Offset};

use super::KafkaError;

pub use crate::common::Watermarks;

/// The partition's range from the consumer's last fetch answer, once there was one.
pub fn cached_watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<Watermarks> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the call only reads the
    // partition's cached fetch state under librdkafka's lock into the two locals.
    let answer = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    let known = answer == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
    (known && high >= 0).then_some(Watermarks { low, high })
}

/// The range of each partition in `from` (partition -> the offset to fetch from), read by a
/// consumer of its own that commits nothing: each partition is fetched once from its offset
/// (or its start), which tells where it starts and ends. Partitions whose range is unknown
/// after `timeout` are missing from the answer.
pub fn partition_ends(
    client: &ClientConfig,
    group_id: &str,
    topic: &str,
    from: &BTreeMap<i32, Option<i64>>,
    timeout: Duration,
) -> Result<BTreeMap<i32, Watermarks>, KafkaError> {
    let (consumer, brokers) =
        super::assigning_consumer(client, group_id, "end-of-partition probe")?;
    super::assign_at(
        &consumer,
        topic,
        &brokers,
        from.iter()
            .map(|(p, at)| (*p, at.map_or(Offset::Beginning, Offset::Offset))),
    )?;
    let deadline = Instant::now() + timeout;
    let mut ends = BTreeMap::new();
    while ends.len() < from.len() && Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
        for partition in from.keys() {
            if let Some(marks) = cached_watermarks(&consumer, topic, *partition) {
                ends.insert(*partition, marks);
            }
        }
    }
    Ok(ends)
}
