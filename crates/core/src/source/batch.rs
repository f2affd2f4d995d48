//! A micro-batch of raw Kafka records, built straight into Arrow columns.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, StringArray, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::common::{kafka_records_schema, Offsets};

/// A record that cannot reach the SQL (its payload is not UTF-8), kept for the dead letter queue.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Broker or producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value, as received.
    pub payload: Vec<u8>,
}

/// One micro-batch handed from the source to the pipeline.
#[derive(Debug)]
pub struct MicroBatch {
    /// Rows of `kafka_records` (UTF-8 payloads).
    pub records: RecordBatch,
    /// Records whose payload is not UTF-8 (reason `invalid utf-8`).
    pub not_utf8: Vec<RawRecord>,
    /// Per partition: the offset after the last message in this batch.
    pub next_offsets: Offsets,
    /// Every assigned partition has been read to its end since the source started.
    pub caught_up: bool,
    /// Partitions read to their end as of this batch (none of their messages is waiting).
    pub at_end: std::collections::BTreeSet<i32>,
    /// Messages `dlq replay` sent back, by (partition, offset): the coordinate each replays.
    pub replayed: HashMap<(i32, i64), String>,
    /// The source's rewind epoch when the batch was read (older epochs are stale).
    pub epoch: u64,
}

impl MicroBatch {
    /// Messages in the batch, rejected ones included.
    pub fn message_count(&self) -> usize {
        self.records.num_rows() + self.not_utf8.len()
    }
}

/// Payload bytes per message a batch reserves at most: a batch of a few huge messages must not
/// make the next one reserve gigabytes for `capacity` of them (bigger ones grow the buffer).
const MAX_RESERVED_PER_MESSAGE: usize = 4096;

/// Appends the messages of one topic column by column; one allocation per column per batch,
/// not per row.
pub struct BatchBuilder {
    /// The topic every message comes from: its column is written whole when the batch is
    /// finished (appending it to every row was a visible share of the reading thread).
    topic: String,
    /// Messages each batch's builders are sized for.
    capacity: usize,
    /// Payload bytes per message reserved, learnt from the last batch.
    value_bytes: usize,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    key: BinaryBuilder,
    value: StringBuilder,
    not_utf8: Vec<RawRecord>,
    next_offsets: Offsets,
    /// The partition the latest messages came from, not yet in `next_offsets`: messages come
    /// in long runs of one partition, and a map update per message was a visible share of the
    /// reading thread.
    run: Option<PartitionRun>,
    rows: usize,
    replayed: HashMap<(i32, i64), String>,
}

/// Consecutive messages of one partition: the offset after the last of them.
struct PartitionRun {
    partition: i32,
    next: i64,
}

impl BatchBuilder {
    /// A builder for messages of `topic`, sized for `capacity` messages of about 256 bytes
    /// (later batches: the size the last one's payloads had).
    pub fn new(topic: impl Into<String>, capacity: usize) -> Self {
        Self::sized(topic.into(), capacity, 256)
    }

    fn sized(topic: String, capacity: usize, value_bytes: usize) -> Self {
        Self {
            topic,
            capacity,
            value_bytes,
            partition: Int32Builder::with_capacity(capacity),
            offset: Int64Builder::with_capacity(capacity),
            timestamp: TimestampMillisecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            key: BinaryBuilder::with_capacity(capacity, capacity * 16),
            value: StringBuilder::with_capacity(capacity, capacity * value_bytes),
            not_utf8: Vec::new(),
            next_offsets: Offsets::new(),
            run: None,
            rows: 0,
            replayed: HashMap::new(),
        }
    }

    /// Messages appended so far (rejected ones included).
    pub fn len(&self) -> usize {
        self.rows + self.not_utf8.len()
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one message; a payload that is not UTF-8 is set aside for the dead letter queue.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        self.advance(partition, offset + 1);
        let payload = payload.unwrap_or_default();
        // SIMD validation: the payload is checked here once and never again (the column is
        // UTF-8 from then on), and std's byte loop was a visible share of the reading thread.
        match simdutf8::basic::from_utf8(payload) {
            Ok(text) => {
                self.partition.append_value(partition);
                self.offset.append_value(offset);
                self.timestamp.append_option(timestamp_ms);
                self.key.append_option(key);
                self.value.append_value(text);
                self.rows += 1;
            }
            Err(_) => self.not_utf8.push(RawRecord {
                topic: self.topic.clone(),
                partition,
                offset,
                timestamp_ms,
                key: key.map(<[u8]>::to_vec),
                payload: payload.to_vec(),
            }),
        }
    }

    /// Raises the partition's next offset to `next`.
    fn advance(&mut self, partition: i32, next: i64) {
        match &mut self.run {
            Some(run) if run.partition == partition => {
                run.next = run.next.max(next);
            }
            _ => {
                self.end_run();
                self.run = Some(PartitionRun { partition, next });
            }
        }
    }

    /// Moves the current run's offset into `next_offsets`.
    fn end_run(&mut self) {
        if let Some(run) = self.run.take() {
            self.next_offsets
                .advance(&self.topic, run.partition, run.next);
        }
    }

    /// Notes that the message at (partition, offset) replays `original` (a dead letter's source).
    pub fn mark_replay(&mut self, partition: i32, offset: i64, original: String) {
        self.replayed.insert((partition, offset), original);
    }

    /// Finishes the batch and resets the builder for the next one.
    pub fn finish(
        &mut self,
        caught_up: bool,
        at_end: std::collections::BTreeSet<i32>,
        epoch: u64,
    ) -> Result<MicroBatch, ArrowError> {
        // Arrow's builders hand their buffers over and start again from nothing, so each batch
        // after the first grew every column by doubling (copying, and faulting in fresh pages
        // each time): fresh builders sized like this batch instead.
        let value_bytes = match self.rows {
            0 => self.value_bytes,
            rows => {
                ((self.value.values_slice().len() / rows) * 9 / 8 + 1).min(MAX_RESERVED_PER_MESSAGE)
            }
        };
        self.end_run();
        let fresh = Self::sized(self.topic.clone(), self.capacity, value_bytes);
        let mut done = std::mem::replace(self, fresh);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(repeated(&done.topic, done.rows)?),
            Arc::new(done.partition.finish()),
            Arc::new(done.offset.finish()),
            Arc::new(done.timestamp.finish()),
            Arc::new(done.key.finish()),
            Arc::new(done.value.finish()),
        ];
        Ok(MicroBatch {
            records: RecordBatch::try_new(kafka_records_schema(), columns)?,
            not_utf8: done.not_utf8,
            next_offsets: done.next_offsets,
            caught_up,
            at_end,
            replayed: done.replayed,
            epoch,
        })
    }

    /// Drops what was appended (the pipeline will not take it).
    pub fn clear(&mut self) {
        if !self.is_empty() {
            let _ = self.finish(false, Default::default(), 0);
        }
    }
}

/// `text` in each of `rows` rows.
fn repeated(text: &str, rows: usize) -> Result<StringArray, ArrowError> {
    let too_long = || ArrowError::ComputeError(format!("{rows} copies of {text:?} exceed 2 GiB"));
    let total = text.len().checked_mul(rows).ok_or_else(too_long)?;
    i32::try_from(total).map_err(|_| too_long())?;
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(text.len(), rows));
    // SAFETY: the offsets end at the values' length (checked to fit i32 above) and each row
    // is `text` whole, so the values are UTF-8 with every row on a character boundary.
    Ok(unsafe {
        StringArray::new_unchecked(
            offsets,
            Buffer::from_vec(text.as_bytes().repeat(rows)),
            None,
        )
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};

    use super::*;

    #[test]
    fn each_batch_starts_sized_like_the_last_and_bounded() {
        let mut builder = BatchBuilder::new("t", 100);
        let huge = vec![b'x'; 1 << 20];
        builder.push(0, 0, Some(1), Some(b"k"), Some(&huge));
        let first = builder.finish(false, Default::default(), 0).unwrap();
        assert_eq!(first.records.num_rows(), 1);
        // A megabyte message must not make the next batch reserve 100 of them.
        assert_eq!(builder.value_bytes, MAX_RESERVED_PER_MESSAGE);
        for offset in 1..=10 {
            builder.push(1, offset, None, None, Some(b"{\"a\":1}"));
        }
        builder.push(1, 11, None, None, Some(b"\xff"));
        let second = builder.finish(false, Default::default(), 0).unwrap();
        let values = second.records.column(5).as_string::<i32>();
        assert_eq!(values.len(), 10);
        assert!(values.iter().all(|v| v == Some("{\"a\":1}")));
        let topics = second.records.column(0).as_string::<i32>();
        assert_eq!(topics.len(), 10);
        assert!(topics.iter().all(|t| t == Some("t")));
        assert_eq!(second.not_utf8[0].topic, "t");
        assert_eq!(second.not_utf8.len(), 1);
        assert_eq!(second.next_offsets.get("t", 1), Some(12));
        assert_eq!(second.next_offsets.get("t", 0), None);
        // 7-byte payloads: about 8 bytes a message reserved next.
        assert_eq!(builder.value_bytes, 8);
    }

    #[test]
    fn each_partition_ends_after_its_highest_offset_however_the_runs_interleave() {
        let mut builder = BatchBuilder::new("t", 16);
        for (partition, offset) in [(0, 5), (0, 6), (1, 9), (0, 7), (1, 3), (1, 10), (2, 0)] {
            builder.push(partition, offset, None, None, Some(b"{}"));
        }
        let batch = builder.finish(false, Default::default(), 0).unwrap();
        let mut ends: Vec<(&str, i32, i64)> = batch.next_offsets.iter().collect();
        ends.sort();
        assert_eq!(ends, vec![("t", 0, 8), ("t", 1, 11), ("t", 2, 1)]);
        // Nothing carries over into the next batch.
        builder.push(2, 1, None, None, Some(b"{}"));
        let next = builder.finish(false, Default::default(), 0).unwrap();
        assert_eq!(next.next_offsets.iter().count(), 1);
        assert_eq!(next.next_offsets.get("t", 2), Some(2));
    }
}
