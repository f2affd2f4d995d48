//! The rdkafka consumer in the pipeline's group, run on its own thread so that reading the next
//! micro-batch overlaps with processing the current one.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::cursor::{Cursors, Rewound};
use super::queue::{Fetched, HeaderName, MessageQueue, Taken};
use super::quirks::{End, Poll, Rejoin, ResumeCheck, Resumed};
use crate::common::summary::OffsetJump;
use crate::common::{Offsets, Watermarks};
use crate::config::StartFrom;
use crate::ends::cached_watermarks;
use crate::telemetry::repeated::repeated_errors;
use campaign_core::source::batch::BatchBuilder;
use campaign_core::source::{Source, SourceError, SourceEvent};

/// The name of the thread that reads the source topic (profiles and the bench tell it apart by it).
pub const SOURCE_THREAD: &str = "kafka-source";

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
    /// Read on past offsets the topic no longer holds instead of stopping (`run
    /// --accept-offset-jumps`).
    pub accept_offset_jumps: bool,
    /// Partitions of the topic when the run starts (a lone member holding fewer is stuck: see
    /// the broker workaround [`Rejoin`]).
    pub partitions: usize,
}

/// Where newly assigned partitions resume: asked of the tables at every assignment, so that
/// progress lives in Iceberg and not in the consumer group. Partitions absent from the answer
/// start at `source.start_from`.
pub type ResumeLookup =
    Box<dyn Fn(&[i32]) -> Result<Offsets, Box<dyn std::error::Error + Send + Sync>> + Send + Sync>;

/// How often an assignment's resume lookup is tried before the source gives up.
const LOOKUP_ATTEMPTS: u32 = 6;

/// Shared between the consumer's callbacks and the pipeline.
#[derive(Default)]
struct Shared {
    /// Where each assigned partition resumes, as looked up at assignment or set by a rewind.
    resume: Mutex<Offsets>,
    /// Partitions currently assigned to this consumer.
    assigned: Mutex<BTreeSet<i32>>,
    /// Group changes seen by the rebalance callback, for the reading thread to hand on in order.
    changes: Mutex<Vec<Result<SourceEvent, SourceError>>>,
    /// Set with each change, so that the reading thread takes no lock per message.
    changed: AtomicBool,
    /// Consumer lag per partition, from librdkafka's statistics (the fetch high watermark).
    lag: Mutex<BTreeMap<i32, i64>>,
    /// The source is stopping: the consumer's close may still run the rebalance callback, on
    /// whatever thread drops it (an async runtime's, where the resume lookup cannot block).
    closing: AtomicBool,
    /// The queue assigned partitions are forwarded to (taken out before the consumer is
    /// dropped: it must not outlive the client).
    queue: Mutex<Option<Arc<MessageQueue>>>,
}

impl Shared {
    /// Queues a group change for the reading thread.
    fn report(&self, change: Result<SourceEvent, SourceError>) {
        lock(&self.changes).push(change);
        self.changed.store(true, Ordering::SeqCst);
    }

    /// The group changes queued since the last call.
    fn take_changes(&self) -> Vec<Result<SourceEvent, SourceError>> {
        if !self.changed.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *lock(&self.changes))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Positions newly assigned partitions where the tables stand, and reports group changes.
struct SourceContext {
    shared: Arc<Shared>,
    topic: String,
    start_from: StartFrom,
    lookup: ResumeLookup,
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::client_log::report_log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::client_log::report_error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // A broker connection is up again: whatever kept failing has recovered.
        if statistics.brokers.values().any(|b| b.state == "UP") {
            repeated_errors().recovered();
        }
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut lag = lock(&self.shared.lag);
        for (partition, stats) in &topic.partitions {
            // librdkafka reports -1 while it does not know, and lists an internal partition -1.
            if *partition >= 0 && stats.consumer_lag >= 0 {
                lag.insert(*partition, stats.consumer_lag);
            }
        }
    }
}

impl SourceContext {
    /// The tables' resume offsets for `partitions`, retried with backoff while the catalog does
    /// not answer (the group waits: nothing is read before the partitions are positioned).
    fn look_up(&self, partitions: &[i32]) -> Result<Offsets, SourceError> {
        let mut wait = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match (self.lookup)(partitions) {
                Ok(offsets) => return Ok(offsets),
                Err(err) if attempt < LOOKUP_ATTEMPTS => {
                    tracing::warn!(topic = %self.topic, ?partitions, "reading where the assigned partitions resume failed (attempt {attempt} of {LOOKUP_ATTEMPTS}), retrying in {wait:?}: {}", crate::common::error::Causes(err.as_ref()));
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
                Err(source) => {
                    return Err(SourceError::Resume {
                        topic: self.topic.clone(),
                        partitions: partitions.to_vec(),
                        source,
                    })
                }
            }
        }
    }
}

impl SourceContext {
    /// Positions `partitions` (in `tpl`) where the tables stand, assigns them to `consumer`
    /// with their messages forwarded to the source's queue, and reports the new assignment to
    /// the reading thread.
    fn take_over(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
        tpl: &mut TopicPartitionList,
    ) {
        let resume = match self.look_up(partitions) {
            Ok(resume) => resume,
            Err(error) => {
                self.shared.report(Err(error));
                return;
            }
        };
        let mut assigned = lock(&self.shared.assigned);
        for partition in partitions {
            // A partition the tables hold nothing from starts at `start_from: earliest` from
            // its beginning, not at the group's committed offset: the group may be ahead of the
            // tables (tables dropped and recreated to rebuild them from Kafka), and starting
            // there would lose every event before it. With `latest` the group's offset is kept,
            // so that a restart does not skip what arrived in between.
            let offset = match (resume.get(&self.topic, *partition), self.start_from) {
                (Some(next), _) => Some(Offset::Offset(next)),
                (None, StartFrom::Earliest) => Some(Offset::Beginning),
                (None, StartFrom::Latest) => None,
            };
            if let Some(offset) = offset {
                let _ = tpl.set_partition_offset(&self.topic, *partition, offset);
            }
            assigned.insert(*partition);
        }
        *lock(&self.shared.resume) = resume;
        tracing::info!(topic = %self.topic, partitions = ?assigned, "partitions assigned");
        // Before the assignment, so that fetching starts forwarded (a partition not forwarded
        // is read from the consumer's own queue, one message a poll).
        if let Some(queue) = lock(&self.shared.queue).as_ref() {
            for partition in partitions.iter().filter(|p| !left_unforwarded(**p)) {
                if !queue.forward(consumer, &self.topic, *partition) {
                    tracing::warn!(topic = %self.topic, partition, "forwarding the partition to the source's queue failed: reading it one message a poll");
                }
            }
        }
        if let Err(err) = consumer.assign(tpl) {
            tracing::error!("assigning partitions failed: {err}");
        }
        self.shared.report(Ok(SourceEvent::Assigned {
            partitions: assigned.clone(),
        }));
    }
}

/// Whether the process tests asked for `partition` to be read from the consumer's own queue,
/// as a forwarding that did not take would leave it.
#[cfg(feature = "test-hooks")]
fn left_unforwarded(partition: i32) -> bool {
    std::env::var("CAMPAIGN_TEST_UNFORWARDED_PARTITIONS")
        .is_ok_and(|list| list.split(',').any(|p| p.trim() == partition.to_string()))
}

#[cfg(not(feature = "test-hooks"))]
fn left_unforwarded(_partition: i32) -> bool {
    false
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS as ASSIGN;
        let mut assigned = lock(&self.shared.assigned);
        if err != ASSIGN {
            let revoked = std::mem::take(&mut *assigned);
            tracing::info!(topic = %self.topic, partitions = ?revoked, "partitions revoked");
            if let Err(err) = consumer.unassign() {
                tracing::error!("unassigning partitions failed: {err}");
            }
            self.shared.report(Ok(SourceEvent::Revoked));
            return;
        }
        drop(assigned);
        if self.shared.closing.load(Ordering::SeqCst) {
            tracing::debug!(topic = %self.topic, "partitions assigned while the source closes: not taken");
            return;
        }
        let partitions: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        self.take_over(consumer, &partitions, tpl);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {}
}

/// Asks of the reading thread.
enum Command {
    /// Position partitions again: at `offsets`, or at `start_from` where it has none (batches
    /// read before carry an older epoch).
    Rewind {
        epoch: u64,
        partitions: BTreeSet<i32>,
        offsets: Offsets,
    },
}

/// The running source: micro-batches arrive on [`KafkaSource::next`].
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    shared: Arc<Shared>,
    events: mpsc::Receiver<Result<SourceEvent, SourceError>>,
    commands: std::sync::mpsc::Sender<Command>,
    /// The epoch of the last rewind asked for: batches of older epochs are stale.
    epoch: u64,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    topic: String,
    group_id: String,
    /// The client settings, for the end-of-partition probe.
    client: ClientConfig,
}

impl KafkaSource {
    /// Joins the group and starts reading; assigned partitions resume where `lookup` says.
    pub fn start(
        client: &ClientConfig,
        options: SourceOptions,
        lookup: ResumeLookup,
    ) -> Result<Self, SourceError> {
        let topic = options.topic.clone();
        let group_id = options.group_id.clone();
        let fail = |source: KafkaError| SourceError::Consumer {
            topic: topic.clone(),
            source: Box::new(source),
        };
        let shared = Arc::new(Shared::default());
        let mut config = ClientConfig::new();
        // A runner killed without leaving the group holds its partitions until its session
        // times out, so a restart waits that long: keep it short unless the user says otherwise.
        config
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", super::quirks::FETCH_WAIT_MAX_MS);
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
        let session_timeout = config
            .get("session.timeout.ms")
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_secs(45), Duration::from_millis);
        let context = SourceContext {
            shared: shared.clone(),
            topic: topic.clone(),
            start_from: options.start_from,
            lookup,
        };
        let consumer: BaseConsumer<SourceContext> =
            config.create_with_context(context).map_err(fail)?;
        *lock(&shared.queue) = MessageQueue::new(&consumer).map(Arc::new);
        consumer.subscribe(&[&topic]).map_err(fail)?;
        let consumer = Arc::new(consumer);
        let (sender, events) = mpsc::channel(2);
        let (commands, received) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            consumer: consumer.clone(),
            shared: shared.clone(),
            options,
            stop: stop.clone(),
            sender,
            commands: received,
            session_timeout,
        };
        let thread = std::thread::Builder::new()
            .name(SOURCE_THREAD.into())
            .spawn(move || reader.run())
            .map_err(|source| {
                // Released before the consumer, which this return drops.
                lock(&shared.queue).take();
                SourceError::Thread {
                    topic: topic.clone(),
                    source,
                }
            })?;
        Ok(Self {
            consumer,
            shared,
            events,
            commands,
            epoch: 0,
            stop,
            thread: Some(thread),
            topic,
            group_id,
            client: client.clone(),
        })
    }

    /// Partitions currently assigned.
    pub fn assigned(&self) -> BTreeSet<i32> {
        lock(&self.shared.assigned).clone()
    }
}

/// How long the end-of-partition probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn next(&mut self) -> Option<Result<SourceEvent, SourceError>> {
        loop {
            let event = self.events.recv().await?;
            match event {
                Ok(SourceEvent::Batch(batch)) if batch.epoch < self.epoch => continue,
                other => return Some(other),
            }
        }
    }

    fn rewind(&mut self, partitions: BTreeSet<i32>, offsets: Offsets) {
        self.epoch += 1;
        let command = Command::Rewind {
            epoch: self.epoch,
            partitions,
            offsets,
        };
        if self.commands.send(command).is_err() {
            tracing::warn!(topic = %self.topic, "the reading thread has stopped; nothing to rewind");
        }
    }

    fn group_members(&self) -> Option<usize> {
        group_members(&self.consumer, &self.group_id)
    }

    fn commit_group_offsets(&self, offsets: &Offsets) {
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

    fn lag(&self) -> BTreeMap<i32, i64> {
        let assigned = self.assigned();
        lock(&self.shared.lag)
            .iter()
            .filter(|(p, _)| assigned.contains(p))
            .map(|(p, l)| (*p, *l))
            .collect()
    }

    /// Reads each partition once with a consumer of its own, outside the group (see
    /// [`crate::ends::partition_ends`]).
    async fn partition_ends(
        &self,
        from: &BTreeMap<i32, Option<i64>>,
    ) -> Result<BTreeMap<i32, Watermarks>, SourceError> {
        let (client, group, topic) = (
            self.client.clone(),
            format!("{}.ends", self.group_id),
            self.topic.clone(),
        );
        let from = from.clone();
        let probe = tokio::task::spawn_blocking(move || {
            crate::ends::partition_ends(&client, &group, &topic, &from, PROBE_TIMEOUT)
        });
        let failed = |message: String| SourceError::Ends {
            topic: self.topic.clone(),
            source: Box::new(crate::KafkaError::Admin {
                topic: self.topic.clone(),
                message,
            }),
        };
        probe
            .await
            .map_err(|e| failed(format!("the probe's thread failed: {e}")))?
            .map_err(|source| SourceError::Ends {
                topic: self.topic.clone(),
                source: Box::new(source),
            })
    }

    fn stop(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.stop();
        self.events.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The reading thread's handle went with it: this releases the queue before the client.
        lock(&self.shared.queue).take();
    }
}

/// The reading loop on its own thread.
struct Reader {
    consumer: Arc<BaseConsumer<SourceContext>>,
    shared: Arc<Shared>,
    options: SourceOptions,
    stop: Arc<AtomicBool>,
    sender: mpsc::Sender<Result<SourceEvent, SourceError>>,
    commands: std::sync::mpsc::Receiver<Command>,
    /// The consumer's session timeout (the broker workaround's [`Rejoin`] counts in it).
    session_timeout: Duration,
}

/// What the reading loop carries from one poll to the next.
struct Reading {
    /// The micro-batch being built.
    builder: BatchBuilder,
    /// Where reading stands in each held partition.
    cursors: Cursors,
    /// The broker workaround's check of resumed partitions.
    resumes: ResumeCheck,
    /// When the batch being built took its first message.
    opened: Instant,
    /// The pipeline's last rewind: batches read before it carry an older one.
    epoch: u64,
}

/// How long the consumer's own queue stays the one waited on after it last handed a message.
const OWN_QUEUE_QUIET: Duration = Duration::from_secs(1);

/// How often a runner that holds no partition says so.
const UNASSIGNED_REPORT: Duration = Duration::from_secs(10);

impl Reader {
    /// Fresh cursors for the assigned partitions, at the resume offsets the last rebalance or
    /// rewind left.
    fn assignment(&self) -> Cursors {
        let assigned = lock(&self.shared.assigned).clone();
        let resume = lock(&self.shared.resume);
        Cursors::assign(&assigned, |p| resume.get(&self.options.topic, p))
    }

    fn seek(&self, partition: i32, to: i64) {
        self.seek_to(partition, Offset::Offset(to));
    }

    fn seek_to(&self, partition: i32, to: Offset) {
        if let Err(err) =
            self.consumer
                .seek(&self.options.topic, partition, to, Duration::from_secs(10))
        {
            tracing::warn!(topic = %self.options.topic, partition, "seeking to {to:?} failed: {err}");
        }
    }

    /// Where a partition the tables hold nothing from starts.
    fn start_offset(&self) -> Offset {
        match self.options.start_from {
            StartFrom::Earliest => Offset::Beginning,
            StartFrom::Latest => Offset::Stored,
        }
    }

    /// A partition read to its end below where the tables resume it: the topic is not the
    /// one they read. Its end is the high watermark of the last fetch answer (librdkafka's
    /// cached value; ListOffsets is not asked, tansu 0.6 answers it wrongly). The end of a
    /// partition only grows and the tables once read up to `resume` from it, so any end below
    /// that proves the topic was recreated or truncated.
    /// With it, the partition's start (its low watermark, where reading may go on).
    fn beyond_end(
        &self,
        partition: i32,
        resume: i64,
        marks: Watermarks,
    ) -> Option<(i64, SourceError)> {
        (marks.high < resume).then(|| {
            let beyond = SourceError::BeyondEnd {
                topic: self.options.topic.clone(),
                partition,
                tables: resume,
                end: marks.high,
            };
            (marks.low.clamp(0, marks.high), beyond)
        })
    }

    fn send(&self, event: Result<SourceEvent, SourceError>) -> bool {
        self.sender.blocking_send(event).is_ok()
    }

    fn run(self) {
        let poll_timeout = self.options.max_wait.min(Duration::from_millis(100));
        let queue = lock(&self.shared.queue).clone();
        let replay_of = HeaderName::new(crate::common::REPLAY_OF_HEADER);
        let mut taken = Taken::default();
        let mut reading = Reading {
            builder: BatchBuilder::new(self.options.topic.clone(), self.options.max_rows),
            cursors: self.assignment(),
            resumes: ResumeCheck::default(),
            opened: Instant::now(),
            epoch: 0,
        };
        let mut idle = Unassigned::new();
        let mut rejoin = Rejoin::new(self.session_timeout);
        let mut rejoin_partial = Rejoin::new(self.session_timeout);
        // When the consumer's own queue last handed a message: while it does, it is the one
        // waited on (a partition whose forwarding did not take is read from it).
        let mut own_queue_read: Option<Instant> = None;
        while !self.stop.load(Ordering::SeqCst) {
            // Rewinds and seeks back before the poll, so that what it returns comes from the new
            // positions (`ResumeCheck` drops what earlier polls returned of a partition positioned
            // after them: checked against the new position, it could confirm a resume offset the
            // broker never answered from, and the messages after that offset were lost).
            self.reposition(&mut reading);
            // The consumer's own queue: the group's events (the rebalance callback runs in this
            // poll), and the messages of any partition not forwarded to the source's queue.
            let own_wait = if queue.is_none() || own_queue_read.is_some() {
                poll_timeout
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(own_wait);
            let poll = reading.resumes.polled();
            let now = Instant::now();
            if self.take_rebalance(&mut reading, now).is_break() {
                return;
            }
            if idle.report_empty(reading.cursors.is_empty()).is_some() {
                tracing::info!(
                    topic = %self.options.topic,
                    group = %self.options.group_id,
                    "this runner holds no partition; the group has {members} member(s) (more runners than partitions wait as standbys)",
                    members = self.group_members().map_or_else(|| "an unknown number of".to_string(), |n| n.to_string()),
                );
            }
            if let Some(attempt) = rejoin.due(reading.cursors.is_empty(), now) {
                self.rejoin(attempt);
            }
            let partial =
                !reading.cursors.is_empty() && reading.cursors.len() < self.options.partitions;
            if rejoin_partial.due(partial, now).is_some() {
                self.rejoin_if_alone(reading.cursors.len());
            }
            let handed = polled.is_some();
            if matches!(polled, Some(Ok(_))) {
                repeated_errors().recovered();
                if own_queue_read.is_none() {
                    tracing::debug!(topic = %self.options.topic, "a message on the consumer's own queue: a partition is not forwarded");
                }
                own_queue_read = Some(now);
            } else if own_queue_read.is_some_and(|at| now.duration_since(at) > OWN_QUEUE_QUIET) {
                own_queue_read = None;
            }
            if let Some(fetched) = polled {
                if self
                    .fetched(&mut reading, fetched, &replay_of, poll, now)
                    .is_break()
                {
                    return;
                }
            }
            if self.hand_on_batch(&mut reading, now).is_break() {
                return;
            }
            let Some(queue) = &queue else {
                continue;
            };
            let wait = if handed || own_queue_read.is_some() {
                Duration::ZERO
            } else {
                poll_timeout
            };
            queue.take(wait, &mut taken);
            if taken.is_empty() {
                continue;
            }
            let poll = reading.resumes.polled();
            let now = Instant::now();
            let mut delivered = false;
            for fetched in taken.iter() {
                delivered |= fetched.is_ok();
                if self
                    .fetched(&mut reading, fetched, &replay_of, poll, now)
                    .is_break()
                    || self.hand_on_batch(&mut reading, now).is_break()
                {
                    return;
                }
            }
            // Once a take, not once a message: it was a visible share of the reading thread.
            if delivered {
                repeated_errors().recovered();
            }
        }
    }

    /// What one poll or take handed: a message, a partition's end, or an error.
    fn fetched<M: Fetched>(
        &self,
        reading: &mut Reading,
        fetched: Result<M, KafkaError>,
        replay_of: &HeaderName,
        poll: Poll,
        now: Instant,
    ) -> ControlFlow<()> {
        match fetched {
            Ok(message) => self.arrived(reading, &message, replay_of, poll, now),
            Err(KafkaError::PartitionEOF(partition)) => {
                self.reached_end(reading, partition, poll, now)
            }
            Err(err) => {
                crate::client_log::report_error(&err, "reading the source topic");
                ControlFlow::Continue(())
            }
        }
    }

    /// Takes in a rebalance that happened inside the last poll (its callback runs there): its
    /// changes are handed on before anything read afterwards, and what was read before is
    /// forgotten (the pipeline drops it). The message that poll returned came after it.
    fn take_rebalance(&self, reading: &mut Reading, now: Instant) -> ControlFlow<()> {
        let changes = self.shared.take_changes();
        if changes.is_empty() {
            return ControlFlow::Continue(());
        }
        for change in changes {
            if !self.send(change) {
                return ControlFlow::Break(());
            }
        }
        reading.builder.clear();
        reading.cursors = self.assignment();
        reading.resumes.reset();
        reading.resumes.expect(reading.cursors.resumed(), now);
        ControlFlow::Continue(())
    }

    /// Positions partitions again before the next poll: the pipeline's rewinds, and the broker
    /// workaround's seeks back for resumed partitions that stay silent.
    fn reposition(&self, reading: &mut Reading) {
        let mut repositioned: Vec<i32> = Vec::new();
        while let Ok(Command::Rewind {
            epoch,
            partitions,
            offsets,
        }) = self.commands.try_recv()
        {
            reading.epoch = epoch;
            reading.builder.clear();
            let mut resume = lock(&self.shared.resume);
            for partition in partitions {
                let tables = offsets.get(&self.options.topic, partition);
                let Some(rewound) = reading.cursors.rewind(partition, tables) else {
                    continue;
                };
                reading.resumes.forget(partition);
                match rewound {
                    Rewound::To(offset) => {
                        resume.set(&self.options.topic, partition, offset);
                        repositioned.push(partition);
                        self.seek(partition, offset);
                    }
                    // Whatever arrives first is where the partition starts.
                    Rewound::FromStart => self.seek_to(partition, self.start_offset()),
                }
            }
        }
        // The clock only when a partition awaits its answer: this runs before every poll.
        if repositioned.is_empty() && !reading.resumes.awaits_answers() {
            return;
        }
        let now = Instant::now();
        reading.resumes.expect(repositioned, now);
        let cursors = &reading.cursors;
        for (partition, back_to) in reading.resumes.stalled(|p| cursors.resume(p), now) {
            tracing::info!(
                topic = %self.options.topic,
                partition,
                "resuming at {:?}, the broker answered nothing: seeking back to {back_to}",
                cursors.resume(partition)
            );
            self.seek(partition, back_to);
        }
    }

    /// A message of the topic: checked against where its partition resumes (the broker
    /// workaround), then added to the batch unless it was handed on already.
    fn arrived(
        &self,
        reading: &mut Reading,
        message: &impl Fetched,
        replay_of: &HeaderName,
        poll: Poll,
        now: Instant,
    ) -> ControlFlow<()> {
        let partition = message.partition();
        let offset = message.offset();
        // Only the partitions held now reach the pipeline (a message fetched before a
        // rebalance may still arrive).
        if !reading.cursors.touched(partition) {
            return ControlFlow::Continue(());
        }
        let resume = reading.cursors.resume(partition);
        match reading.resumes.check(partition, offset, resume, poll) {
            Resumed::ReadOn => {}
            Resumed::Stale => {
                tracing::debug!(topic = %self.options.topic, partition, offset, "a message polled before its partition was positioned: dropped");
                return ControlFlow::Continue(());
            }
            Resumed::SeekBack(back_to) => {
                tracing::info!(
                    topic = %self.options.topic,
                    partition,
                    "resuming at {resume:?}, the broker answered from {offset}: seeking back to {back_to}"
                );
                self.seek(partition, back_to);
                reading.resumes.expect([partition], Instant::now());
                return ControlFlow::Continue(());
            }
            Resumed::Gone { first } => {
                let from = resume.unwrap_or_default();
                let gone = SourceError::Gone {
                    topic: self.options.topic.clone(),
                    partition,
                    tables: from,
                    first,
                };
                if !self.options.accept_offset_jumps {
                    self.send(Err(gone));
                    return ControlFlow::Break(());
                }
                tracing::warn!("{gone}: reading on there (--accept-offset-jumps)");
                let jump = OffsetJump::past_deleted(from, first);
                if !self.send(Ok(SourceEvent::Jumped { partition, jump })) {
                    return ControlFlow::Break(());
                }
            }
        }
        if reading.cursors.arrived(partition, offset) {
            if reading.builder.is_empty() {
                reading.opened = now;
            }
            // The builder holds the topic subscribed to: `message.topic()` measures and checks
            // the name's C string on every message, a visible share of this thread.
            reading.builder.push(
                partition,
                offset,
                message.timestamp_ms(),
                message.key(),
                message.payload(),
            );
            if let Some(original) = message.header_text(replay_of) {
                reading.builder.mark_replay(partition, offset, original);
            }
        }
        ControlFlow::Continue(())
    }

    /// A fetch answer reached the end of `partition`; an end below where the tables resume it
    /// means the topic is not the one they read.
    fn reached_end(
        &self,
        reading: &mut Reading,
        partition: i32,
        poll: Poll,
        now: Instant,
    ) -> ControlFlow<()> {
        let resume = reading.cursors.resume(partition);
        let marks = cached_watermarks(&self.consumer, &self.options.topic, partition);
        let end = marks.map(|m| m.high);
        if reading
            .resumes
            .end_of_partition(partition, resume, end, poll)
            == End::Stale
        {
            tracing::debug!(topic = %self.options.topic, partition, ?resume, ?end, "an end of partition that does not show the resume offset reached: waiting for the first message");
            return ControlFlow::Continue(());
        }
        let beyond = resume.zip(marks);
        let Some((start, beyond)) =
            beyond.and_then(|(resume, marks)| self.beyond_end(partition, resume, marks))
        else {
            reading.cursors.reached_end(partition);
            reading.resumes.reached_end(partition);
            return ControlFlow::Continue(());
        };
        if !self.options.accept_offset_jumps {
            self.send(Err(beyond));
            return ControlFlow::Break(());
        }
        tracing::warn!(
            "{beyond}: reading it from its start, offset {start} (--accept-offset-jumps)"
        );
        let jump = OffsetJump::back_to_start(resume.unwrap_or_default(), start);
        if !self.send(Ok(SourceEvent::Jumped { partition, jump })) {
            return ControlFlow::Break(());
        }
        lock(&self.shared.resume).set(&self.options.topic, partition, start);
        reading.cursors.restart(partition, start);
        reading.resumes.forget(partition);
        reading.resumes.expect([partition], now);
        self.seek(partition, start);
        ControlFlow::Continue(())
    }

    /// Hands the batch on when it is full, has waited `max_wait`, or every held partition is
    /// read to its end.
    fn hand_on_batch(&self, reading: &mut Reading, now: Instant) -> ControlFlow<()> {
        let caught_up = reading.cursors.caught_up();
        let full = reading.builder.len() >= self.options.max_rows;
        // `now`, not a fresh reading: reading the clock three times a message was a quarter
        // of this thread's time.
        let waited = now.duration_since(reading.opened) >= self.options.max_wait;
        if !(full || waited || caught_up) {
            return ControlFlow::Continue(());
        }
        let batch = reading
            .builder
            .finish(caught_up, reading.cursors.at_end(), reading.epoch)
            .map(SourceEvent::Batch)
            .map_err(|source| SourceError::Arrow {
                topic: self.options.topic.clone(),
                source,
            });
        reading.opened = Instant::now();
        if self.send(batch) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    fn group_members(&self) -> Option<usize> {
        group_members(&self.consumer, &self.options.group_id)
    }

    /// Leaves the group and joins it again as a new member (see [`Rejoin`]), unless the group
    /// has more members than the topic has partitions (then holding nothing is a standby's lot).
    /// When a rejoin did not help and the group lists this runner as its only member, it takes
    /// every partition by direct assignment instead (see [`Rejoin`]).
    fn rejoin(&self, attempt: u32) {
        let topic = &self.options.topic;
        let members = self.group_members();
        let partitions = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| Some(m.topics().first()?.partitions().len()));
        if let (Some(members), Some(partitions)) = (members, partitions) {
            if members > partitions {
                return;
            }
        }
        if let (true, Some(1), Some(partitions)) = (attempt > 1, members, partitions) {
            tracing::warn!(
                topic = %topic,
                group = %self.options.group_id,
                "the group coordinator assigns nothing although this runner is the group's only member: taking all {partitions} partitions by direct assignment (commits stay validated, so a runner the coordinator forgot to list cannot make it write twice)"
            );
            self.consumer.unsubscribe();
            let all: Vec<i32> = (0..partitions as i32).collect();
            let mut tpl = TopicPartitionList::new();
            for partition in &all {
                tpl.add_partition(topic, *partition);
            }
            self.consumer
                .context()
                .take_over(&self.consumer, &all, &mut tpl);
            return;
        }
        tracing::warn!(
            topic = %topic,
            group = %self.options.group_id,
            ?members,
            ?partitions,
            "this runner has held no partition for twice the session timeout although the group has no more members than partitions: leaving and joining the group again as a new member"
        );
        self.consumer.unsubscribe();
        if let Err(err) = self.consumer.subscribe(&[topic]) {
            tracing::warn!(topic = %topic, "rejoining the group failed: {err}");
        }
    }
}

impl Reader {
    /// Rejoins the group when its coordinator lists this runner, holding `held` of the topic's
    /// partitions, as its only member (see [`Rejoin`]).
    fn rejoin_if_alone(&self, held: usize) {
        if self.group_members() != Some(1) {
            return;
        }
        let topic = &self.options.topic;
        tracing::warn!(
            topic = %topic,
            group = %self.options.group_id,
            held,
            partitions = self.options.partitions,
            "this runner is the group's only member but holds only some partitions: leaving and joining the group again as a new member"
        );
        self.consumer.unsubscribe();
        if let Err(err) = self.consumer.subscribe(&[topic]) {
            tracing::warn!(topic = %topic, "rejoining the group failed: {err}");
        }
    }
}

/// Members of a consumer group, as its coordinator lists them (`None` when it does not answer).
fn group_members<C: ConsumerContext>(consumer: &BaseConsumer<C>, group_id: &str) -> Option<usize> {
    let groups = consumer
        .fetch_group_list(Some(group_id), Duration::from_secs(5))
        .ok()?;
    let group = groups.groups().iter().find(|g| g.name() == group_id)?;
    Some(group.members().len())
}

/// When a runner that holds no partition says so: at once, then every [`UNASSIGNED_REPORT`].
struct Unassigned {
    since: Option<Instant>,
    last_report: Option<Instant>,
}

impl Unassigned {
    fn new() -> Self {
        Self {
            since: Some(Instant::now()),
            last_report: None,
        }
    }

    /// `Some(())` when it is time to say that nothing is held.
    fn report_empty(&mut self, holds_nothing: bool) -> Option<()> {
        if !holds_nothing {
            self.since = None;
            self.last_report = None;
            return None;
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        // Joining a group takes a moment: only an empty hand that lasts is news.
        if now.duration_since(since) < Duration::from_secs(3) {
            return None;
        }
        if self
            .last_report
            .is_some_and(|last| now.duration_since(last) < UNASSIGNED_REPORT)
        {
            return None;
        }
        self.last_report = Some(now);
        Some(())
    }
}
