//! The rdkafka consumer in the pipeline's group, run on its own thread so that reading the next
//! micro-batch overlaps with processing the current one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::batch::{BatchBuilder, MicroBatch};
use super::SourceError;
use crate::common::Offsets;
use crate::config::StartFrom;

/// How the source reads.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Topic to read.
    pub topic: String,
    /// Consumer group.
    pub group_id: String,
    /// Where partitions without stored progress begin.
    pub start_from: StartFrom,
    /// Most messages per micro-batch.
    pub max_rows: usize,
    /// Longest time a micro-batch stays open.
    pub max_wait: Duration,
}

/// Shared between the consumer's callbacks and the pipeline.
#[derive(Default)]
struct Shared {
    /// Where each partition resumes: the offsets the tables have absorbed.
    resume: Mutex<Offsets>,
    /// Partitions currently assigned to this consumer.
    assigned: Mutex<BTreeSet<i32>>,
    /// Set by a rebalance so that the reading thread resets its end-of-partition bookkeeping.
    rebalanced: AtomicBool,
    /// Consumer lag per partition, from librdkafka's statistics (the fetch high watermark).
    lag: Mutex<BTreeMap<i32, i64>>,
}

/// Seeks newly assigned partitions to the offsets the tables hold, so that progress lives in
/// Iceberg and not in the consumer group.
struct SourceContext {
    shared: Arc<Shared>,
    topic: String,
    start_from: StartFrom,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // End of partition is bookkeeping (the reading loop tracks it), not an error.
        if !crate::kafka::is_end_of_partition(&error) {
            tracing::error!(topic = %self.topic, "librdkafka: {error}: {reason}");
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut lag = self
            .shared
            .lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (partition, stats) in &topic.partitions {
            // librdkafka reports -1 while it does not know, and lists an internal partition -1.
            if *partition >= 0 && stats.consumer_lag >= 0 {
                lag.insert(*partition, stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS as ASSIGN;
        let mut assigned = self
            .shared
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if err == ASSIGN {
            let resume = self
                .shared
                .resume
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for partition in partitions {
                // A partition the tables hold nothing from starts at `start_from: earliest` from
                // its beginning, not at the group's committed offset: the group may be ahead of
                // the tables (tables dropped and recreated to rebuild them from Kafka), and
                // starting there would lose every event before it. With `latest` the group's
                // offset is kept, so that a restart does not skip what arrived in between.
                let offset = match (resume.get(&self.topic, partition), self.start_from) {
                    (Some(next), _) => Some(Offset::Offset(next)),
                    (None, StartFrom::Earliest) => Some(Offset::Beginning),
                    (None, StartFrom::Latest) => None,
                };
                if let Some(offset) = offset {
                    let _ = tpl.set_partition_offset(&self.topic, partition, offset);
                }
                assigned.insert(partition);
            }
            tracing::info!(topic = %self.topic, partitions = ?assigned, "partitions assigned");
            if let Err(err) = consumer.assign(tpl) {
                tracing::error!("assigning partitions failed: {err}");
            }
        } else {
            assigned.clear();
            tracing::info!(topic = %self.topic, "partitions revoked");
            if let Err(err) = consumer.unassign() {
                tracing::error!("unassigning partitions failed: {err}");
            }
        }
        self.shared.rebalanced.store(true, Ordering::SeqCst);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {}
}

/// The running source: micro-batches arrive on [`KafkaSource::next`].
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    shared: Arc<Shared>,
    batches: mpsc::Receiver<Result<MicroBatch, SourceError>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    topic: String,
}

impl KafkaSource {
    /// Joins the group and starts reading; partitions resume at `resume` where it knows them.
    pub fn start(
        client: &ClientConfig,
        options: SourceOptions,
        resume: Offsets,
    ) -> Result<Self, SourceError> {
        let topic = options.topic.clone();
        let fail = |message: String| SourceError::Consumer {
            topic: topic.clone(),
            message,
        };
        let shared = Arc::new(Shared {
            resume: Mutex::new(resume),
            ..Shared::default()
        });
        let mut config = ClientConfig::new();
        // A runner killed without leaving the group holds its partitions until its session
        // times out, so a restart waits that long: keep it short unless the user says otherwise.
        config
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000");
        for (key, value) in client.config_map().iter() {
            config.set(*key, *value);
        }
        config
            .set("group.id", &options.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", "1000")
            .set(
                "auto.offset.reset",
                match options.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            );
        let context = SourceContext {
            shared: shared.clone(),
            topic: topic.clone(),
            start_from: options.start_from,
        };
        let consumer: BaseConsumer<SourceContext> = config
            .create_with_context(context)
            .map_err(|e| fail(e.to_string()))?;
        consumer
            .subscribe(&[&topic])
            .map_err(|e| fail(e.to_string()))?;
        let consumer = Arc::new(consumer);
        let (sender, batches) = mpsc::channel(2);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            consumer: consumer.clone(),
            shared: shared.clone(),
            options,
            stop: stop.clone(),
            sender,
        };
        let thread = std::thread::Builder::new()
            .name("kafka-source".into())
            .spawn(move || reader.run())
            .map_err(|e| fail(format!("cannot start the reading thread: {e}")))?;
        Ok(Self {
            consumer,
            shared,
            batches,
            stop,
            thread: Some(thread),
            topic,
        })
    }

    /// The next micro-batch; `None` once the source has stopped.
    pub async fn next(&mut self) -> Option<Result<MicroBatch, SourceError>> {
        self.batches.recv().await
    }

    /// Records progress the tables now hold: later rebalances resume there, and the consumer
    /// group's committed offsets follow (for lag monitoring only).
    pub fn absorbed(&self, offsets: &Offsets) {
        self.shared
            .resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .advance_all(offsets);
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in offsets.iter() {
            let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(next));
        }
        if tpl.count() > 0 {
            if let Err(err) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(topic = %self.topic, "committing group offsets (for lag monitoring) failed: {err}");
            }
        }
    }

    /// Partitions currently assigned.
    pub fn assigned(&self) -> BTreeSet<i32> {
        self.shared
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Consumer lag per assigned partition, as of librdkafka's last statistics.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        let assigned = self.assigned();
        self.shared
            .lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(p, _)| assigned.contains(p))
            .map(|(p, l)| (*p, *l))
            .collect()
    }

    /// Asks the reading thread to stop after the batch in hand.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop();
        self.batches.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reading loop on its own thread.
struct Reader {
    consumer: Arc<BaseConsumer<SourceContext>>,
    shared: Arc<Shared>,
    options: SourceOptions,
    stop: Arc<AtomicBool>,
    sender: mpsc::Sender<Result<MicroBatch, SourceError>>,
}

impl Reader {
    /// The assigned partitions and their resume offsets, as the last rebalance left them.
    fn assignment(&self) -> (BTreeSet<i32>, HashMap<i32, i64>) {
        let assigned = self
            .shared
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let resume = self
            .shared
            .resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let offsets = assigned
            .iter()
            .filter_map(|p| Some((*p, resume.get(&self.options.topic, *p)?)))
            .collect();
        (assigned, offsets)
    }

    fn seek_back(&self, partition: i32, to: i64) {
        if let Err(err) = self.consumer.seek(
            &self.options.topic,
            partition,
            Offset::Offset(to),
            Duration::from_secs(10),
        ) {
            tracing::warn!(topic = %self.options.topic, partition, "seeking back to {to} failed: {err}");
        }
    }

    fn run(self) {
        let mut builder = BatchBuilder::new(self.options.max_rows);
        let mut at_end: HashSet<i32> = HashSet::new();
        let mut resumes = ResumeCheck::default();
        // Next offset this reader has handed on, per partition: a rebalance rewinds the consumer
        // to the tables' progress while newer messages are still buffered downstream, and those
        // must not be handed on twice.
        let mut handed_on: HashMap<i32, i64> = HashMap::new();
        let poll_timeout = self.options.max_wait.min(Duration::from_millis(100));
        let mut opened = Instant::now();
        // Copies of the shared assignment and resume offsets, refreshed only when a rebalance
        // changes them, so the per-message path takes no lock. Offsets our own commits add later
        // never exceed what `handed_on` already guards.
        let (mut assigned, mut resume_at) = self.assignment();
        while !self.stop.load(Ordering::SeqCst) {
            let polled = self.consumer.poll(poll_timeout);
            // The rebalance callback runs inside `poll`: refresh before handling what it returned.
            if self.shared.rebalanced.swap(false, Ordering::SeqCst) {
                at_end.clear();
                (assigned, resume_at) = self.assignment();
                resumes = ResumeCheck::default();
                resumes.expect(resume_at.keys().copied(), Instant::now());
            }
            for (partition, back_to) in resumes.stalled(&resume_at, Instant::now()) {
                tracing::info!(
                    topic = %self.options.topic,
                    partition,
                    "resuming at {:?}, the broker answered nothing: seeking back to {back_to}",
                    resume_at.get(&partition)
                );
                self.seek_back(partition, back_to);
            }
            match polled {
                Some(Ok(message)) => {
                    let partition = message.partition();
                    let offset = message.offset();
                    at_end.remove(&partition);
                    let resume = resume_at.get(&partition).copied();
                    if let Some(back_to) = resumes.check(partition, offset, resume) {
                        tracing::info!(
                            topic = %self.options.topic,
                            partition,
                            "resuming at {resume:?}, the broker answered from {offset}: seeking back to {back_to}"
                        );
                        self.seek_back(partition, back_to);
                        resumes.expect([partition], Instant::now());
                        continue;
                    }
                    // Below the tables' progress: already absorbed (a rebalance, a seek back or
                    // group offsets behind the tables), so it is dropped, not written twice.
                    let seen = handed_on.get(&partition).is_some_and(|next| offset < *next);
                    if !seen && resume.is_none_or(|next| offset >= next) {
                        handed_on.insert(partition, offset + 1);
                        if builder.is_empty() {
                            opened = Instant::now();
                        }
                        builder.push(
                            message.topic(),
                            partition,
                            offset,
                            message.timestamp().to_millis(),
                            message.key(),
                            message.payload(),
                        );
                        if let Some(original) =
                            crate::kafka::header_text(&message, crate::common::REPLAY_OF_HEADER)
                        {
                            builder.mark_replay(partition, offset, original);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    at_end.insert(partition);
                    resumes.reached_end(partition);
                }
                Some(Err(err)) => {
                    tracing::warn!(topic = %self.options.topic, "consumer: {err}");
                }
                None => {}
            }
            let caught_up = !assigned.is_empty() && assigned.iter().all(|p| at_end.contains(p));
            let full = builder.len() >= self.options.max_rows;
            let waited = opened.elapsed() >= self.options.max_wait;
            if full || waited || caught_up {
                let ends = at_end.iter().copied().collect();
                let batch = builder
                    .finish(caught_up, ends)
                    .map_err(|source| SourceError::Arrow {
                        topic: self.options.topic.clone(),
                        source,
                    });
                opened = Instant::now();
                if self.sender.blocking_send(batch).is_err() {
                    return;
                }
            }
        }
    }
}

/// Makes sure a partition really resumes at the offset the tables hold.
///
/// Kafka answers a fetch inside a record batch with the whole batch, and the client skips the
/// records before the requested offset. tansu 0.6 instead answers with the next batch that
/// starts at or after the offset, silently skipping the rest of the batch the offset falls in.
/// So when the first message after (re)assignment lies beyond the resume offset, the reader
/// seeks back further (doubling the distance) until the resume offset itself is delivered;
/// the messages before it are then dropped as already absorbed. Only when even offset 0 starts
/// later is the gap real (retention or compaction), and it is logged. When the offset falls in
/// the partition's last batch, tansu answers nothing at all (no records, no end of partition),
/// so a resumed partition that stays silent for [`RESUME_PATIENCE`] is sought back the same way.
#[derive(Default)]
struct ResumeCheck {
    /// Partitions whose resume offset was confirmed since the last assignment.
    confirmed: HashSet<i32>,
    /// Current seek-back distance per partition.
    distance: BTreeMap<i32, i64>,
    /// Partitions not yet confirmed, with when they were last (re)positioned.
    waiting: BTreeMap<i32, Instant>,
}

/// How long a resumed partition may stay silent before the reader seeks it further back.
const RESUME_PATIENCE: Duration = Duration::from_secs(1);

impl ResumeCheck {
    /// Starts waiting for the first message of freshly positioned partitions.
    fn expect(&mut self, partitions: impl IntoIterator<Item = i32>, now: Instant) {
        for partition in partitions {
            self.waiting.insert(partition, now);
        }
    }

    /// The partition was read to its end: nothing lies beyond the resume offset to skip.
    fn reached_end(&mut self, partition: i32) {
        self.waiting.remove(&partition);
        self.confirmed.insert(partition);
    }

    /// Partitions silent for too long since they were positioned, with where to seek them.
    fn stalled(&mut self, resume_at: &HashMap<i32, i64>, now: Instant) -> Vec<(i32, i64)> {
        let silent: Vec<i32> = self
            .waiting
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= RESUME_PATIENCE)
            .map(|(partition, _)| *partition)
            .collect();
        silent
            .into_iter()
            .filter_map(|partition| {
                let resume = *resume_at.get(&partition)?;
                // As if the broker had answered from beyond the resume offset.
                let target = self.check(partition, resume + 1, Some(resume))?;
                self.waiting.insert(partition, now);
                Some((partition, target))
            })
            .collect()
    }

    /// `Some(offset)` to seek back to before reading on, `None` to accept the message.
    fn check(&mut self, partition: i32, offset: i64, resume: Option<i64>) -> Option<i64> {
        if self.confirmed.contains(&partition) {
            return None;
        }
        self.waiting.remove(&partition);
        let Some(resume) = resume else {
            self.confirmed.insert(partition);
            return None;
        };
        if offset <= resume {
            self.confirmed.insert(partition);
            self.distance.remove(&partition);
            return None;
        }
        let distance = self.distance.entry(partition).or_insert(1_000);
        let previous_target = resume - *distance / 2;
        if previous_target <= 0 && *distance > 1_000 {
            tracing::warn!(
                partition,
                "offsets {resume}..{offset} are no longer on the broker; resuming at {offset}"
            );
            self.confirmed.insert(partition);
            return None;
        }
        let target = (resume - *distance).max(0);
        *distance *= 2;
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::ResumeCheck;

    #[test]
    fn seeks_back_until_the_resume_offset_is_delivered() {
        let mut check = ResumeCheck::default();
        // Resume at 12000 but the broker answers from 13795: seek back, further each time.
        assert_eq!(check.check(1, 13795, Some(12000)), Some(11000));
        assert_eq!(check.check(1, 13795, Some(12000)), Some(10000));
        // Now an earlier batch arrives: confirmed, and later messages pass untouched.
        assert_eq!(check.check(1, 9500, Some(12000)), None);
        assert_eq!(check.check(1, 13795, Some(12000)), None);
    }

    #[test]
    fn a_silent_resumed_partition_is_sought_back_too() {
        use std::collections::HashMap;
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let mut check = ResumeCheck::default();
        let resume_at = HashMap::from([(2, 14_000), (0, 50)]);
        check.expect([0, 2], start);
        check.reached_end(0);
        assert!(
            check.stalled(&resume_at, start).is_empty(),
            "patience first"
        );
        let later = start + Duration::from_secs(2);
        assert_eq!(check.stalled(&resume_at, later), vec![(2, 13_000)]);
        assert!(
            check.stalled(&resume_at, later).is_empty(),
            "waits again after a seek"
        );
        let even_later = later + Duration::from_secs(2);
        assert_eq!(check.stalled(&resume_at, even_later), vec![(2, 12_000)]);
        assert_eq!(check.check(2, 12_500, Some(14_000)), None);
        assert!(check
            .stalled(&resume_at, even_later + Duration::from_secs(9))
            .is_empty());
    }

    #[test]
    fn accepts_a_real_gap_once_offset_zero_was_tried() {
        let mut check = ResumeCheck::default();
        assert_eq!(check.check(0, 900, Some(500)), Some(0));
        assert_eq!(check.check(0, 900, Some(500)), None);
        assert_eq!(check.check(2, 5, None), None);
    }
}
